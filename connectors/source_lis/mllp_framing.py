"""MLLP framing with a bounded buffer: ``0x0B`` + message + ``0x1C 0x0D``.

A :class:`FrameReader` turns the bytes of one connection into :class:`Frame` s. It
holds at most ``max_bytes`` (+1) of the frame being read: a longer frame is read to
its end block all the same, so its sender can be answered, but only its first
``HEAD_BYTES`` (enough for MSH) are kept. Bytes outside a frame are noise and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

START, END = b"\x0b", b"\x1c\x0d"
HEAD_BYTES = 4096  # kept of a frame over the cap: MSH is well within it


@dataclass(frozen=True)
class Frame:
    body: bytes  # the message, or its first HEAD_BYTES when it was over the cap
    size: int  # bytes between the start and the end block

    @property
    def truncated(self) -> bool:
        return self.size > len(self.body)


class FrameReader:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.frames_started = 0  # tells the listener when a new frame (and its read timeout) began
        self._buffer = bytearray()
        self._size = -1  # bytes of the current frame so far; -1 outside a frame
        self._split_end = False  # the last read ended in 0x1C: the end block may finish in the next

    @property
    def in_frame(self) -> bool:
        return self._size >= 0

    @property
    def partial_bytes(self) -> int:
        """Bytes of the frame being read so far (held or not)."""
        return max(self._size, 0)

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data)
        pos, n = 0, len(data)
        while pos < n:
            if self._size < 0:
                start = data.find(START, pos)
                if start < 0:
                    break
                self._size, pos = 0, start + 1
                self.frames_started += 1
                continue
            if self._split_end:
                self._split_end = False
                if data[pos] == 0x0D:
                    self._size -= 1  # that 0x1C was the end block's first byte, not content
                    del self._buffer[self._size:]
                    frames.append(self._finish())
                    pos += 1
                    continue
            end = data.find(END, pos)
            if end < 0:
                self._append(view[pos:])
                self._split_end = data[-1] == 0x1C
                break
            self._append(view[pos:end])
            frames.append(self._finish())
            pos = end + 2
        return frames

    def release(self) -> int:
        """Drop the frame being read (read timeout, disconnect); returns its size so far."""
        size = self.partial_bytes
        self._buffer = bytearray()
        self._size = -1
        self._split_end = False
        return size

    def _append(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        # One byte of slack: a frame of exactly max_bytes may end in a 0x1C whose 0x0D comes next.
        if self._size <= self.max_bytes + 1:
            self._buffer += chunk
            return
        if len(self._buffer) > HEAD_BYTES:  # over the cap: keep the head only, free the rest now
            self._buffer = bytearray(self._buffer[:HEAD_BYTES])
        room = HEAD_BYTES - len(self._buffer)
        if room > 0:
            self._buffer += chunk[:room]

    def _finish(self) -> Frame:
        size = self._size
        body = bytes(self._buffer[:HEAD_BYTES]) if size > self.max_bytes else bytes(self._buffer)
        self._buffer = bytearray()
        self._size = -1
        return Frame(body, size)
