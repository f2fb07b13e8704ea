"""An MLLP listener: asyncio in a background thread, ACKs sent when the task says so.

Senders keep one connection open and stream many messages, possibly without waiting
for each ACK, so each connection has a reader (frames -> :class:`InboundMessage`
handed to the task) and a writer that sends the ACKs in arrival order as their
futures resolve. The task resolves a future (``reply``) only after the message's
records are committed to Kafka: AA means "durably stored". Connections are
independent, so several senders are served at once.

One client must not take the listener down for the others (:class:`MllpLimits`):

* a frame is held up to the frame cap; a longer one is read to its end block keeping
  only its head (:mod:`.mllp_framing`), so its sender still gets an answer;
* a frame must be complete within the read timeout of its start block, and a
  connection with nothing in flight is closed after the idle timeout;
* at the connection cap a new connection takes the place of the longest idle one
  (no partial frame, no ACK owed); when none is idle it is refused;
* a connection's unacknowledged messages are bounded in number and bytes (back-pressure);
* the task may close a connection after an ACK (``reply(..., close=True)``).

A dropped partial frame is freed at once and glibc is asked to return freed memory
to the system (``malloc_trim``): otherwise the arenas keep it after a burst of large
frames.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.source_lis.mllp_framing import END, START, FrameReader

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_TRIM_AFTER_BYTES = 1 << 20  # dropping this much of a frame is worth a malloc_trim


@dataclass(frozen=True)
class MllpLimits:
    """What one connection may hold and how long it may take (see the module docstring)."""

    max_message_bytes: int = 1_000_000
    read_timeout_s: float = 60.0
    idle_timeout_s: float = 600.0
    max_connections: int = 100
    max_unacked: int = 1000
    max_unacked_bytes: int = 32 * 1024 * 1024


@dataclass
class InboundMessage:
    """A received frame; ``reply`` (thread-safe, first call wins) sends its ACK.

    ``size`` is the frame's length; ``raw`` holds only its head when it was over the frame cap."""

    raw: bytes
    received_ms: int
    peer: str
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _future: asyncio.Future[tuple[bytes, bool]] = field(repr=False)
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.raw)

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)

    @property
    def peer_host(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    def reply(self, ack: bytes, close: bool = False) -> None:
        """Send ``ack``; with ``close`` the connection is closed after it (a misbehaving peer)."""

        def resolve() -> None:
            if not self._future.done():
                self._future.set_result((ack, close))

        try:
            self._loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # loop closed: the connection is gone, the sender will re-send
            pass


def frame(message: bytes) -> bytes:
    return START + message + END


class _Connection:
    def __init__(self, peer: str, writer: asyncio.StreamWriter, max_message_bytes: int) -> None:
        self.peer = peer
        self.writer = writer
        self.framer = FrameReader(max_message_bytes)
        self.unacked = 0
        self.unacked_bytes = 0
        self.acked = asyncio.Event()
        self.last_active = time.monotonic()
        self.frame_started = 0.0
        self.closing = False

    @property
    def idle(self) -> bool:
        return not self.framer.in_frame and not self.unacked

    def close(self) -> None:
        self.closing = True
        self.writer.close()  # the reader sees EOF and ends the connection's handler


class _Throttle:
    """Log one line per key (peer) at most every ``interval_s``, counting the ones left out."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        """None: do not log now; else how many were left out since the last line."""
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        if len(self._last) > 10_000:  # many peers: forget the old ones rather than grow
            self._last.clear()
        self._last[key] = now
        return self._skipped.pop(key, 0)


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    return (lambda: trim(0)) if trim is not None else None


class MllpServer:
    """Listens on host:port; ``on_message`` is called (in the listener thread) for each frame."""

    def __init__(self, host: str, port: int, on_message: Callable[[InboundMessage], None],
                 limits: MllpLimits | None = None) -> None:
        self.host = host
        self.port = port
        self.on_message = on_message
        self.limits = limits or MllpLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._throttle = _Throttle()
        self._trim = _malloc_trim()
        self._trim_scheduled = False

    @property
    def connections(self) -> int:
        return len(self._connections)

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
            # A deep backlog: a burst of connections is accepted (and capped) here, not dropped by the kernel.
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, limit=_READ_CHUNK, backlog=1024))
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
            for conn in list(self._connections):
                conn.close()
            if self._handlers:  # a handler may wait for an ACK that will never come: cut it short
                _, waiting = await asyncio.wait(self._handlers, timeout=1.0)
                for task in waiting:
                    task.cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
            loop.stop()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
        except RuntimeError:
            pass
        self._thread.join(10)

    # -- one connection -------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = "%s:%s" % address[:2] if address else "?"
        conn = _Connection(peer, writer, self.limits.max_message_bytes)
        if not self._admit(conn):
            writer.close()
            return
        self._connections.add(conn)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)  # type: ignore[arg-type]
        acks: asyncio.Queue[tuple[asyncio.Future[tuple[bytes, bool]], int] | None] = asyncio.Queue(
            self.limits.max_unacked)
        sender = asyncio.create_task(self._send_acks(conn, acks))
        try:
            await self._read(conn, reader, acks)
            self._drop_partial_frame(conn)
            await acks.put(None)
            await sender  # the ACKs still owed for complete messages go out before the close
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._drop_partial_frame(conn)
            sender.cancel()  # only still running when the listener is stopping
            self._connections.discard(conn)
            self._handlers.discard(handler)  # type: ignore[arg-type]
            writer.close()

    async def _read(self, conn: _Connection, reader: asyncio.StreamReader,
                    acks: asyncio.Queue[tuple[asyncio.Future[tuple[bytes, bool]], int] | None]) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        while not conn.closing:
            now = time.monotonic()
            if conn.framer.in_frame:
                timeout = conn.frame_started + limits.read_timeout_s - now
            else:
                timeout = conn.last_active + limits.idle_timeout_s - now
            try:
                async with asyncio.timeout(max(timeout, 0)):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                if conn.framer.in_frame:
                    skipped = self._throttle("timeout " + conn.peer.rsplit(":", 1)[0])
                    if skipped is not None:
                        log.warning("MLLP: no end block from %s within %.0f s of the frame's start (%d bytes): "
                                    "closing (%d more from that address since the last such line)", conn.peer,
                                    limits.read_timeout_s, conn.framer.partial_bytes, skipped)
                    return
                if conn.unacked:  # ACKs are owed: the task is still at work, this is no idle sender
                    conn.last_active = time.monotonic()
                    continue
                log.info("MLLP: closing the connection from %s, idle for %.0f s", conn.peer, limits.idle_timeout_s)
                return
            if not data:
                return
            started = conn.framer.frames_started
            frames = conn.framer.feed(data)
            if conn.framer.frames_started != started:
                conn.frame_started = time.monotonic()
            for received in frames:
                conn.last_active = time.monotonic()
                # Back-pressure: stop reading while this connection has too much unacknowledged.
                while conn.unacked and conn.unacked_bytes + received.size > limits.max_unacked_bytes:
                    conn.acked.clear()
                    await conn.acked.wait()
                future: asyncio.Future[tuple[bytes, bool]] = loop.create_future()
                conn.unacked += 1
                conn.unacked_bytes += received.size
                await acks.put((future, received.size))  # at most max_unacked in flight per connection
                self.on_message(InboundMessage(received.body, int(time.time() * 1000), conn.peer, loop, future,
                                               received.size))

    async def _send_acks(self, conn: _Connection,
                         acks: asyncio.Queue[tuple[asyncio.Future[tuple[bytes, bool]], int] | None]) -> None:
        writer = conn.writer
        while True:
            item = await acks.get()
            if item is None:
                return
            future, size = item
            try:
                if not conn.closing:
                    ack, close = await future
                    writer.write(frame(ack))
                    await writer.drain()
                    if close:
                        log.warning("MLLP: closing the connection from %s on the task's request", conn.peer)
                        conn.close()
            except (ConnectionError, asyncio.CancelledError):
                conn.closing = True  # keep taking items off the queue: the reader may be waiting to put one
            finally:
                conn.unacked -= 1
                conn.unacked_bytes -= size
                conn.last_active = time.monotonic()
                conn.acked.set()

    # -- limits ---------------------------------------------------------------------------------------
    def _admit(self, conn: _Connection) -> bool:
        """At the cap, make room by closing the longest idle connection; else refuse ``conn``."""
        if len(self._connections) < self.limits.max_connections:
            return True
        idle = [c for c in self._connections if c.idle and not c.closing]
        if idle:
            victim = min(idle, key=lambda c: c.last_active)
            self._connections.discard(victim)
            victim.close()
            skipped = self._throttle("evict")
            if skipped is not None:
                log.info("MLLP: %d connections open (the cap): closed the idle one from %s for %s "
                         "(%d more since the last such line)", self.limits.max_connections, victim.peer, conn.peer,
                         skipped)
            return True
        skipped = self._throttle(conn.peer.rsplit(":", 1)[0])
        if skipped is not None:
            log.warning("MLLP: refused a connection from %s: %d connections open (the cap), none idle "
                        "(%d more refused from that address since the last such line)",
                        conn.peer, self.limits.max_connections, skipped)
        return False

    def _drop_partial_frame(self, conn: _Connection) -> None:
        if conn.framer.release() >= _TRIM_AFTER_BYTES:
            self._schedule_trim()

    def _schedule_trim(self) -> None:
        """One malloc_trim shortly after a burst of dropped frames, not one per frame."""
        if self._trim is None or self._trim_scheduled or self._loop is None:
            return
        self._trim_scheduled = True

        def trim() -> None:
            self._trim_scheduled = False
            assert self._trim is not None
            self._trim()

        self._loop.call_later(0.2, trim)
