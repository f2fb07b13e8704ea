"""MLLP framing: many messages per connection, split frames, several senders, ACK on reply."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator

import pytest

from connectors.source_lis.mllp_server import InboundMessage, MllpServer, frame


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
