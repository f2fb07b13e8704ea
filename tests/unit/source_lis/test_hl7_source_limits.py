"""The HL7 mode against hostile input, in-process: messages too large for Kafka, frames over the cap,
one peer's garbage, and the ERR segment of every negative ACK."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.unit.source_lis.fake_runtime import FakeRuntime
from tests.unit.source_lis.hl7_samples import oru
from tests.unit.source_lis.test_hl7_source import Sender, make_task

START, END = b"\x0b", b"\x1c\x0d"


def _segments(ack: bytes) -> dict[str, list[str]]:
    return {s.split("|")[0]: s.split("|") for s in ack.decode().strip("\r").split("\r")}


class Peer:
    """A raw MLLP connection, from a chosen loopback address (127.0.0.0/8 is all local)."""

    def __init__(self, port: int, address: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))
        self.buffer = b""

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(START + m + END for m in messages))

    def ack(self) -> bytes | None:
        """The next ACK, or None when the server closed the connection."""
        while END not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        ack, self.buffer = self.buffer.split(END, 1)
        return ack.lstrip(START)

    def close(self) -> None:
        self.sock.close()


def _step_until(runtime: FakeRuntime, done: threading.Event, polls: int = 200) -> None:
    for _ in range(polls):
        if done.is_set():
            return
        runtime.step()
    raise AssertionError("not answered")


def _answer(runtime: FakeRuntime, peer: Peer) -> bytes | None:
    result: list[bytes | None] = []
    done = threading.Event()

    def read() -> None:
        result.append(peer.ack())
        done.set()

    threading.Thread(target=read).start()
    _step_until(runtime, done)
    return result[0]


def _big_oru(control_id: str, size: int) -> bytes:
    head = (oru(control_id) + "NTE|2|L|").encode()
    return head + b"x" * (size - len(head) - 1) + b"\r"


@pytest.fixture
def kafka_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """A producer that takes 40,000-byte records: HL7 messages up to 23,616 bytes (16 KiB of headroom)."""
    monkeypatch.setenv("KAFKA_MESSAGE_MAX_BYTES", "40000")
    return 40_000 - 16 * 1024


def test_a_non_oru_gets_an_ar_that_echoes_its_trigger_with_an_err(tmp_path: Path) -> None:
    runtime = FakeRuntime(make_task(tmp_path)).start()
    peer = Peer(runtime.task.source.mllp_port)  # type: ignore[attr-defined]
    peer.send(b"MSH|^~\\&|ADT1|HOSP|X|Y|20260101||ADT^A01^ADT_A01|ADT7|P|2.5.1\rPID|1\r")
    ack = _segments(_answer(runtime, peer) or b"")
    assert ack["MSH"][8] == "ACK^A01^ACK" and ack["MSA"][1:3] == ["AR", "ADT7"]
    assert ack["ERR"][3] == "200^Unsupported message type^HL70357"
    peer.send(oru("OK1").encode())
    assert "ERR" not in _segments(_answer(runtime, peer) or b"")
    peer.close()
    runtime.task.stop()


def test_an_unmappable_oru_gets_an_ae_whose_err_names_the_field(tmp_path: Path) -> None:
    runtime = FakeRuntime(make_task(tmp_path)).start()
    peer = Peer(runtime.task.source.mllp_port)  # type: ignore[attr-defined]
    peer.send(oru("ST1", obr25="Q").encode())
    ack = _segments(_answer(runtime, peer) or b"")
    assert ack["MSA"][1:3] == ["AE", "ST1"]
    assert ack["ERR"][3] == "103^Table value not found^HL70357" and "OBR-25" in ack["ERR"][8]
    peer.close()
    runtime.task.stop()


def test_a_message_too_large_for_kafka_is_refused_and_dead_lettered_as_a_pointer_into_the_archive(
        tmp_path: Path, kafka_limit: int) -> None:
    runtime = FakeRuntime(make_task(tmp_path, mllp_max_message_bytes=1 << 20)).start()
    peer = Peer(runtime.task.source.mllp_port)  # type: ignore[attr-defined]
    big = _big_oru("BIG1", 30_000)
    peer.send(big)
    ack = _segments(_answer(runtime, peer) or b"")
    assert ack["MSA"][1:3] == ["AR", "BIG1"]
    assert ack["ERR"][3] == "207^Application internal error^HL70357"
    assert f"{len(big)} bytes, more than the {kafka_limit} bytes accepted" in ack["ERR"][8]
    (dead,) = runtime.dead
    headers = dict(dead.headers)
    assert dead.key == b"BIG1" and dead.payload == big.split(b"\r")[0], "the MSH segment, not the body"
    assert headers["lis.refused"] == b"too-large" and headers["lis.message_bytes"] == str(len(big)).encode()
    assert headers["lis.limit_bytes"] == str(kafka_limit).encode() and headers["lis.sender"] == b"LIS|MAINLAB"
    day, pos = headers["lis.archive"].decode().split("@")
    with open(tmp_path / "archive" / day, "rb") as fh:
        fh.seek(int(pos))
        header = fh.readline().split()
        assert int(header[1]) == len(big) and fh.read(len(big)) == big, "the pointer leads to the original"
    assert b"Brien" not in b"".join(v for _, v in dead.headers) + str(dead.error).encode()
    peer.send(oru("NEXT").encode())
    assert _segments(_answer(runtime, peer) or b"")["MSA"][1] == "AA"
    peer.close()
    runtime.task.stop()


def test_a_frame_over_the_cap_is_refused_without_being_held_or_archived(tmp_path: Path) -> None:
    runtime = FakeRuntime(make_task(tmp_path, mllp_max_message_bytes=5000)).start()
    peer = Peer(runtime.task.source.mllp_port)  # type: ignore[attr-defined]
    big = _big_oru("CAP1", 200_000)
    peer.send(big)
    ack = _segments(_answer(runtime, peer) or b"")
    assert ack["MSA"][1:3] == ["AR", "CAP1"] and "200000 bytes" in ack["ERR"][8]
    (dead,) = runtime.dead
    assert dead.payload == big.split(b"\r")[0] and "lis.archive" not in dict(dead.headers)
    archived = b"".join(p.read_bytes() for p in (tmp_path / "archive").iterdir())
    assert b"CAP1" not in archived
    peer.close()
    runtime.task.stop()


def test_one_peers_garbage_is_cut_off_while_other_peers_are_served(tmp_path: Path) -> None:
    runtime = FakeRuntime(make_task(tmp_path, mllp_peer_max_rejects=3)).start()
    port = runtime.task.source.mllp_port  # type: ignore[attr-defined]
    bad = Peer(port, "127.0.0.2")
    bad.send(*[b"garbage %d" % i for i in range(50)])
    good = Sender(port).send("G1", oru("G1"))
    acks = []
    while (ack := _answer(runtime, bad)) is not None:
        acks.append(_segments(ack))
    assert [a["MSA"][1] for a in acks] == ["AR"] * 4, "three rejects allowed, the fourth closes the connection"
    assert all(a["ERR"][3] == "100^Segment sequence error^HL70357" for a in acks)
    assert len(runtime.dead) == 3, "rejects over the limit are not dead-lettered"
    for _ in range(40):
        if good.code is not None:
            break
        runtime.step()
    assert good.ack() == "AA"
    # The peer stays over its limit (disconnected at once, no dead letter) until it sends an acceptable message.
    again = Peer(port, "127.0.0.2")
    again.send(b"more garbage")
    assert _segments(_answer(runtime, again) or b"")["MSA"][1] == "AR" and again.ack() is None
    assert len(runtime.dead) == 3
    fixed = Peer(port, "127.0.0.2")
    fixed.send(oru("G2").encode(), b"one more garbage")
    assert [_segments(_answer(runtime, fixed) or b"")["MSA"][1] for _ in range(2)] == ["AA", "AR"]
    assert len(runtime.dead) == 4, "counted afresh after an accepted message"
    for peer in (bad, again, fixed):
        peer.close()
    runtime.task.stop()
