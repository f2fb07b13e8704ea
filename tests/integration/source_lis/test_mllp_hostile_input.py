"""source-lis in HL7 mode as a real process against the real broker, under hostile input: messages
too large for Kafka, a connection sending garbage, frames with no end block, abandoned 15 MB frames
and a thousand idle connections. The task stays RUNNING and other senders are served throughout."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from devstack.ports import free_port, wait_for_port
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import consume_all, wait_for
from tests.unit.source_lis.hl7_samples import oru

START, END = b"\x0b", b"\x1c\x0d"
MB = 1024 * 1024


class Peer:
    """A raw MLLP connection from a chosen loopback address (the listener counts rejects per address)."""

    def __init__(self, port: int, address: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(address, 0))
        self.buffer = b""

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(START + m + END for m in messages))

    def ack(self) -> dict[str, list[str]] | None:
        """The next ACK's segments by name, or None when the listener closed the connection."""
        while END not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        ack, self.buffer = self.buffer.split(END, 1)
        return {s.split("|")[0]: s.split("|") for s in ack.lstrip(START).decode().strip("\r").split("\r")}

    def close(self) -> None:
        self.sock.close()


def _big_oru(control_id: str, size: int) -> bytes:
    """An ORU^R01 carrying a report PDF (OBX-2 ED) that makes it ``size`` bytes long."""
    head = (oru(control_id) + "OBX|4|ED|11502-2^Lab report^LN||^application^pdf^Base64^").encode()
    return head + b"J" * (size - len(head) - 1) + b"\r"


def _timed_aa(port: int, control_id: str, address: str = "127.0.0.3") -> float:
    """Seconds from connecting to the AA of a good message, on a new connection."""
    started = time.monotonic()
    peer = Peer(port, address)
    try:
        peer.send(oru(control_id).encode())
        ack = peer.ack()
        assert ack is not None and ack["MSA"][1:3] == ["AA", control_id], ack
        return time.monotonic() - started
    finally:
        peer.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Connector:
    def __init__(self, runtime: RuntimeEnv, make_topic: Callable[..., str], log_name: str, **env: str | int) -> None:
        self.runtime = runtime
        self.log_name = log_name
        self.name = f"source-lis-{uuid.uuid4().hex[:8]}"
        self.port, self.status_port = free_port(), free_port()
        topics = {"RESULTS_TOPIC": make_topic("lab-results", partitions=3),
                  "REPORTS_TOPIC": make_topic("lab-reports", partitions=3),
                  "PATIENTS_TOPIC": make_topic("patients", config={"cleanup.policy": "compact"})}
        self.process = runtime.start_real("source-lis", log_name, CONNECTOR_NAME=self.name, LIS_MODE="hl7-mllp",
                                          MLLP_PORT=self.port, STATUS_PORT=self.status_port, **topics, **env)
        wait_for_port(self.port, 60)
        wait_for(lambda: self.state() == "RUNNING", 60, "RUNNING")

    def state(self) -> str:
        try:
            url = f"http://127.0.0.1:{self.status_port}/connectors/{self.name}/status"
            return str(httpx.get(url, timeout=2).json()["tasks"][0]["state"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            return "?"

    def assert_running(self) -> None:
        assert self.process.poll() is None
        assert self.state() == "RUNNING"
        assert "task failed" not in self.log(), "the task never failed"

    def log(self) -> str:
        return self.runtime.log(self.log_name)


def _assert_refused_for_size(ack: dict[str, list[str]] | None, control_id: str, size: int) -> None:
    assert ack is not None, "answered, not dropped"
    assert ack["MSA"][1:3] == ["AR", control_id]
    assert ack["ERR"][3] == "207^Application internal error^HL70357"
    assert f"{size} bytes, more than the" in ack["ERR"][8]


def test_too_large_messages_and_one_connections_garbage_leave_the_task_running_and_others_served(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    lis = Connector(runtime, make_topic, "hostile")  # default limits: the frame cap is what Kafka takes
    assert _timed_aa(lis.port, "WARM1") < 10  # the first transaction also sets up the producer

    big = Peer(lis.port)
    answered_in = []
    for control_id, size in (("BIG2M", 2 * MB), ("BIG15M", 15 * MB)):
        big.send(_big_oru(control_id, size))
        _assert_refused_for_size(big.ack(), control_id, size)
        answered_in.append(_timed_aa(lis.port, f"AFTER-{control_id}"))
    print("AA on another connection after the 2 MB / 15 MB refusals: "
          + " / ".join(f"{t * 1000:.0f} ms" for t in answered_in))
    assert max(answered_in) < 1.0, f"the next good message is acknowledged at once: {answered_in}"
    big.close()

    # 600 garbage frames pipelined on one connection; good senders from another address meanwhile.
    rng = random.Random(12)
    garbage = [b"this is not HL7 %d\r" % i if i % 2 else rng.randbytes(200) for i in range(600)]
    bad = Peer(lis.port, "127.0.0.2")
    try:
        bad.send(*garbage)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the listener may already have closed it
    rejected = []
    while (ack := bad.ack()) is not None:
        rejected.append(ack)
    bad.close()
    assert [a["MSA"][1] for a in rejected] == ["AR"] * 21, "20 rejects in a row allowed, the 21st closes"
    # no MSH (100), or not even valid UTF-8 (102)
    assert {a["ERR"][3] for a in rejected} == {"100^Segment sequence error^HL70357", "102^Data type error^HL70357"}
    for i in range(5):
        assert _timed_aa(lis.port, f"GOOD{i}") < 1.0
    lis.assert_running()
    assert "MLLP peer 127.0.0.2: 21 rejected messages in a row (limit 20)" in lis.log()

    dead = consume_all(runtime.bootstrap, runtime.dlq, timeout=15, expect=22)
    too_large = [m for m in dead if (dict(m.headers() or []).get("lis.refused") == b"too-large")]
    assert sorted(int(dict(m.headers())["lis.message_bytes"]) for m in too_large) == [2 * MB, 15 * MB]
    for message in too_large:
        headers = dict(message.headers())
        assert message.value().startswith(b"MSH|") and b"\r" not in message.value(), "the MSH segment only"
        assert headers["lis.message_id"] == message.key() and headers["lis.sender"] == b"LIS|MAINLAB"
        assert "lis.archive" not in headers, "over the frame cap: the original was not kept"
        assert b"Brien" not in b"".join(headers.values())
    assert len(dead) - len(too_large) == 20, "garbage is dead-lettered only up to the peer's limit"


def test_with_a_raised_frame_cap_large_messages_point_into_the_archive_and_abandoned_frames_are_freed(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    archive = runtime.tmp / "archive"
    lis = Connector(runtime, make_topic, "raised-cap", MLLP_MAX_MESSAGE_BYTES=16 * MB, MLLP_READ_TIMEOUT_MS=2000,
                    HL7_ARCHIVE_DIR=str(archive))
    assert _timed_aa(lis.port, "WARM1") < 10

    # 20 abandoned 15 MB frames: half the senders hang up, half just stop sending (the read timeout ends them).
    start_rss = _rss_mb(lis.process.pid)
    partial = START + b"MSH|^~\\&|LIS|MAINLAB|" + b"x" * (15 * MB)
    peers = [Peer(lis.port) for _ in range(20)]
    for peer in peers:
        peer.sock.sendall(partial)
    wait_for(lambda: _rss_mb(lis.process.pid) > start_rss + 200, 30, "the partial frames held")
    peak_rss = _rss_mb(lis.process.pid)
    for peer in peers[:10]:
        peer.close()
    for peer in peers[10:]:
        started = time.monotonic()
        assert peer.ack() is None, "closed without an answer"
        assert time.monotonic() - started < 5
        peer.close()
    wait_for(lambda: _rss_mb(lis.process.pid) < start_rss + 50, 10, "memory returned", interval=0.5)
    end_rss = _rss_mb(lis.process.pid)
    print(f"RSS: start {start_rss:.0f} MB, 20 abandoned 15 MB frames {peak_rss:.0f} MB, after {end_rss:.0f} MB")
    assert "no end block from 127.0.0.1" in lis.log()

    # Between Kafka's limit and the frame cap: received whole, archived, refused, dead-lettered as a pointer.
    big = Peer(lis.port)
    originals = {}
    for control_id, size in (("BIG2M", 2 * MB), ("BIG15M", 15 * MB)):
        originals[control_id.encode()] = message = _big_oru(control_id, size)
        big.send(message)
        _assert_refused_for_size(big.ack(), control_id, size)
        assert _timed_aa(lis.port, f"AFTER-{control_id}") < 1.0
    big.close()

    # A frame with no end block is closed after the read timeout.
    slow = Peer(lis.port)
    slow.sock.sendall(START + oru("SLOW1").encode())
    started = time.monotonic()
    assert slow.ack() is None
    assert 1.5 < time.monotonic() - started < 5
    slow.close()
    lis.assert_running()

    dead = consume_all(runtime.bootstrap, runtime.dlq, timeout=15, expect=2)
    assert len(dead) == 2
    for message in dead:
        headers = dict(message.headers())
        day, pos = headers["lis.archive"].decode().split("@")
        with open(archive / day, "rb") as fh:
            fh.seek(int(pos))
            length = int(fh.readline().split()[1])
            assert fh.read(length) == originals[message.key()], "the pointer leads to the original"


def test_a_thousand_idle_connections_are_capped_and_a_new_sender_is_answered_within_a_second(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard < 1200:
            pytest.skip("needs 1,200 open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    lis = Connector(runtime, make_topic, "idle")  # MLLP_MAX_CONNECTIONS: the default 100
    assert _timed_aa(lis.port, "WARM1") < 10
    idle = [socket.create_connection(("127.0.0.1", lis.port), timeout=10) for _ in range(1000)]
    try:
        answered_in = _timed_aa(lis.port, "NEW1", address="127.0.0.4")
        print(f"a new sender with 1,000 idle connections made: AA after {answered_in * 1000:.0f} ms")
        assert answered_in < 1.0

        def closed(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True

        wait_for(lambda: sum(closed(s) for s in idle) >= 900, 10, "all but the cap's worth closed")
        assert sum(not closed(s) for s in idle) <= 100
        lis.assert_running()
        assert os.path.exists(f"/proc/{lis.process.pid}")
    finally:
        for sock in idle:
            sock.close()
