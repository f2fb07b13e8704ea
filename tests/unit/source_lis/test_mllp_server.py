"""MLLP listener: many messages per connection, split frames, several senders, ACK on reply;
and its limits: read and idle timeouts, the connection cap, frames over the cap, closing on request."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from connectors.source_lis.mllp_server import InboundMessage, MllpLimits, MllpServer, frame


@pytest.fixture
def server() -> Iterator[tuple[MllpServer, queue.Queue[InboundMessage]]]:
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    srv = MllpServer("127.0.0.1", 0, inbox.put)
    srv.start()
    yield srv, inbox
    srv.stop()


def _read_frames(sock: socket.socket, n: int) -> list[bytes]:
    buffer = b""
    while buffer.count(b"\x1c\x0d") < n:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buffer += chunk
    return [f.lstrip(b"\x0b") for f in buffer.split(b"\x1c\x0d")[:n]]


def test_many_messages_on_one_connection_acked_in_order(server) -> None:  # type: ignore[no-untyped-def]
    srv, inbox = server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        # Pipelined, and split at awkward places: frames cross TCP reads.
        data = b"noise" + b"".join(frame(f"MSG{i}".encode()) for i in range(50))
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
        received = [inbox.get(timeout=10) for _ in range(50)]
        assert [m.raw for m in received] == [f"MSG{i}".encode() for i in range(50)]
        for message in reversed(received):  # the commits may resolve out of order ...
            message.reply(b"ACK-" + message.raw)
        assert _read_frames(sock, 50) == [f"ACK-MSG{i}".encode() for i in range(50)]  # ... ACKs do not


def test_no_ack_before_reply(server) -> None:  # type: ignore[no-untyped-def]
    srv, inbox = server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(frame(b"ONE"))
        message = inbox.get(timeout=10)
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        message.reply(b"OK")
        sock.settimeout(10)
        assert _read_frames(sock, 1) == [b"OK"]


def test_several_senders_at_once(server) -> None:  # type: ignore[no-untyped-def]
    srv, inbox = server

    def responder() -> None:
        while True:
            message = inbox.get()
            if message.raw == b"STOP":
                return
            message.reply(b"ACK-" + message.raw)

    threading.Thread(target=responder, daemon=True).start()
    results: dict[int, list[bytes]] = {}

    def sender(n: int) -> None:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            acks = []
            for i in range(20):
                sock.sendall(frame(f"S{n}-{i}".encode()))
                acks += _read_frames(sock, 1)
            results[n] = acks

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    inbox.put(InboundMessage(b"STOP", 0, "", None, None))  # type: ignore[arg-type]
    assert results == {n: [f"ACK-S{n}-{i}".encode() for i in range(20)] for n in range(5)}


# -- limits: one client must not take the listener down for the others -------------------------------------

def _limited(**limits: float) -> tuple[MllpServer, queue.Queue[InboundMessage]]:
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    srv = MllpServer("127.0.0.1", 0, inbox.put, MllpLimits(**limits))  # type: ignore[arg-type]
    srv.start()
    return srv, inbox


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (fails after ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    while True:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except ConnectionResetError:
            return time.monotonic() - started


def test_a_frame_with_no_end_block_is_closed_after_the_read_timeout() -> None:
    srv, inbox = _limited(read_timeout_s=0.5, idle_timeout_s=60)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"\x0bMSH|^~\\&|never ends")
            assert 0.4 < _closed_within(sock, 5) < 2
        assert inbox.empty()
    finally:
        srv.stop()


def test_an_idle_connection_is_closed_but_not_one_that_is_owed_an_ack() -> None:
    srv, inbox = _limited(idle_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as idle, \
                socket.create_connection(("127.0.0.1", srv.port), timeout=10) as waiting:
            waiting.sendall(frame(b"SLOW"))
            message = inbox.get(timeout=5)
            assert 0.4 < _closed_within(idle, 5) < 2
            time.sleep(0.5)
            message.reply(b"ACK-SLOW")  # the task took longer than the idle timeout
            assert _read_frames(waiting, 1) == [b"ACK-SLOW"]
    finally:
        srv.stop()


def test_at_the_connection_cap_the_longest_idle_connection_makes_room() -> None:
    srv, inbox = _limited(max_connections=3)
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
        _wait(lambda: srv.connections == 3)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as newcomer:
            assert _closed_within(idle[0], 5) < 2, "the oldest idle one was closed"
            newcomer.sendall(frame(b"NEW"))
            inbox.get(timeout=5).reply(b"ACK-NEW")
            assert _read_frames(newcomer, 1) == [b"ACK-NEW"]
        assert srv.connections <= 3
        for sock in idle:
            sock.close()
    finally:
        srv.stop()


def test_at_the_connection_cap_with_none_idle_a_new_connection_is_refused_and_logged(  # type: ignore[no-untyped-def]
        caplog) -> None:
    srv, inbox = _limited(max_connections=2)
    try:
        busy = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
        for i, sock in enumerate(busy):
            sock.sendall(frame(b"BUSY%d" % i))  # owed an ACK: not idle
        messages = [inbox.get(timeout=5) for _ in busy]
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as refused:
            assert _closed_within(refused, 5) < 2
        assert "refused a connection from 127.0.0.1:" in caplog.text
        for message in messages:
            message.reply(b"OK")
        assert [_read_frames(sock, 1) for sock in busy] == [[b"OK"], [b"OK"]]
        for sock in busy:
            sock.close()
    finally:
        srv.stop()


def test_a_frame_over_the_cap_is_delivered_as_its_head_and_size_and_the_connection_goes_on() -> None:
    srv, inbox = _limited(max_message_bytes=10_000)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            big = b"MSH|^~\\&|LIS|LAB\r" + b"x" * 1_000_000
            sock.sendall(frame(big) + frame(b"NEXT"))
            first, second = inbox.get(timeout=10), inbox.get(timeout=10)
            assert first.truncated and first.size == len(big) and big.startswith(first.raw)
            assert (second.raw, second.truncated) == (b"NEXT", False)
            first.reply(b"AR")
            second.reply(b"AA")
            assert _read_frames(sock, 2) == [b"AR", b"AA"]
    finally:
        srv.stop()


def test_reply_with_close_sends_the_ack_then_closes_the_connection(server) -> None:  # type: ignore[no-untyped-def]
    srv, inbox = server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(frame(b"GARBAGE") + frame(b"MORE"))
        first, second = inbox.get(timeout=5), inbox.get(timeout=5)
        first.reply(b"AR", close=True)
        second.reply(b"AR")
        assert _read_frames(sock, 1) == [b"AR"]
        assert _closed_within(sock, 5) < 2
    _wait(lambda: srv.connections == 0)


def _wait(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_stopping_and_restarting_with_connections_owed_acks_leaves_no_pending_task(  # type: ignore[no-untyped-def]
        caplog) -> None:
    """A listener restart (task restart, PUT .../stop) while senders wait for ACKs must end every
    asyncio task it started: no "Task was destroyed but it is pending!" from the event loop."""
    import gc
    import logging

    caplog.set_level(logging.DEBUG, logger="asyncio")
    port = 0
    for _ in range(3):
        inbox: queue.Queue[InboundMessage] = queue.Queue()
        srv = MllpServer("127.0.0.1", port, inbox.put)
        srv.start()
        port = srv.port  # the same port again: as a restarted task binds it
        senders = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
        for i, sock in enumerate(senders):
            sock.sendall(frame(f"MSG{i}".encode()))  # never answered: each connection is owed an ACK
            sock.sendall(b"\x0bhalf a frame")  # and one frame is still being read
        for _ in senders:
            inbox.get(timeout=10)
        srv.stop()
        for sock in senders:
            sock.close()
        gc.collect()
    destroyed = [r.getMessage() for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert destroyed == []
