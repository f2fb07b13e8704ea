"""An MLLP listener: asyncio in a background thread, ACKs sent when the task says so.

MLLP frames a message as ``0x0B`` + message + ``0x1C 0x0D``. Senders keep one
connection open and stream many messages, possibly without waiting for each ACK,
so each connection has a reader (frames -> :class:`InboundMessage` handed to the
task) and a writer that sends the ACKs in arrival order as their futures resolve.
The task resolves a future (``reply``) only after the message's records are
committed to Kafka: AA means "durably stored". Connections are independent, so
several senders are served at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"


@dataclass
class InboundMessage:
    """A received frame; ``reply`` (thread-safe, first call wins) sends its ACK."""

    raw: bytes
    received_ms: int
    peer: str
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _future: asyncio.Future[bytes] = field(repr=False)

    def reply(self, ack: bytes) -> None:
        def resolve() -> None:
            if not self._future.done():
                self._future.set_result(ack)

        try:
            self._loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # loop closed: the connection is gone, the sender will re-send
            pass


def frame(message: bytes) -> bytes:
    return START + message + END


class MllpServer:
    """Listens on host:port; ``on_message`` is called (in the listener thread) for each frame."""

    def __init__(self, host: str, port: int, on_message: Callable[[InboundMessage], None],
                 max_message_bytes: int = 16 * 1024 * 1024, max_unacked: int = 1000) -> None:
        self.host = host
        self.port = port
        self.on_message = on_message
        self.max_message_bytes = max_message_bytes
        self.max_unacked = max_unacked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="mllp-listener", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("MLLP listener did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, limit=1 << 20))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0)
            loop.stop()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
        except RuntimeError:
            pass
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        loop = asyncio.get_running_loop()
        acks: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue(self.max_unacked)
        self._writers.add(writer)
        sender = asyncio.create_task(self._send_acks(acks, writer))
        buffer = bytearray()
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                buffer += data
                while True:
                    start = buffer.find(START)
                    if start < 0:
                        buffer.clear()  # bytes outside a frame are noise
                        break
                    end = buffer.find(END, start)
                    if end < 0:
                        if start:
                            del buffer[:start]
                        if len(buffer) > self.max_message_bytes:
                            log.warning("MLLP frame too large from %s: closing", peer)
                            return
                        break
                    raw = bytes(buffer[start + 1:end])
                    del buffer[:end + 2]
                    future: asyncio.Future[bytes] = loop.create_future()
                    await acks.put(future)  # back-pressure: at most max_unacked in flight per connection
                    self.on_message(InboundMessage(raw, int(time.time() * 1000), peer, loop, future))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await acks.put(None)
            try:
                await sender
            finally:
                self._writers.discard(writer)
                writer.close()

    @staticmethod
    async def _send_acks(acks: asyncio.Queue[asyncio.Future[bytes] | None],
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                future = await acks.get()
                if future is None:
                    return
                ack = await future
                writer.write(frame(ack))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
