"""The HL7 archive: every received message, append-only, one file per UTC day.

It is the LIS's history for replays (``labconnect replay source-lis``): HL7 senders
cannot be asked to re-send a window. Each entry is a header line
``<received epoch ms> <length>\\n`` then the raw bytes and ``\\n``, so any encoding
round-trips unchanged. An entry is complete when its header parses, its received
time falls in the file's day and its bytes end in ``\\n``. A crash mid-write leaves a
torn last entry: the writer cuts it off when it reopens the day file, so later
messages follow the last complete entry; the reader skips a torn entry anywhere
(files torn before that repair) by resynchronising at the next complete one.
Files are ``YYYY-MM-DD.hl7``; retention is the operator's (delete old days).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
# Received epoch ms (13 digits from 2001 to 2286) and the body length; at most 25 bytes.
_HEADER = re.compile(rb"(\d{13}) (\d{1,10})\n")
_HEADER_MAX = 25
_SCAN_CHUNK = 1 << 20


def day_file(received_ms: int) -> str:
    return datetime.fromtimestamp(received_ms / 1000, UTC).strftime("%Y-%m-%d") + ".hl7"


@dataclass(frozen=True)
class _Entry:
    start: int  # position of the header line
    received_ms: int
    body: int  # position of the raw bytes
    length: int

    @property
    def end(self) -> int:
        return self.body + self.length + 1


class _DayFile:
    """The complete entries of one open day file, in order, skipping torn ones."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh = fh
        day = datetime.strptime(name.removesuffix(".hl7"), "%Y-%m-%d").replace(tzinfo=UTC)
        self.first_ms = int(day.timestamp() * 1000)
        self.size = os.fstat(fh.fileno()).st_size

    def entries(self, pos: int = 0) -> Iterator[_Entry]:
        while True:
            entry = self._entry_at(pos) or self._resync(pos + 1)
            if entry is None:
                return
            yield entry
            pos = entry.end

    def _entry_at(self, pos: int) -> _Entry | None:
        fh = self.fh
        fh.seek(pos)
        m = _HEADER.match(fh.read(_HEADER_MAX))
        if m is None:
            return None
        entry = _Entry(pos, int(m[1]), pos + m.end(), int(m[2]))
        if not self.first_ms <= entry.received_ms < self.first_ms + _DAY_MS:
            return None
        if entry.end > self.size:
            self.size = os.fstat(fh.fileno()).st_size  # the live writer may have appended since
            if entry.end > self.size:
                return None
        fh.seek(entry.end - 1)
        return entry if fh.read(1) == b"\n" else None

    def _resync(self, pos: int) -> _Entry | None:
        """The first complete entry that starts at or after ``pos`` (past a torn one)."""
        while pos < self.size:
            self.fh.seek(pos)
            chunk = self.fh.read(_SCAN_CHUNK + _HEADER_MAX)
            for m in _HEADER.finditer(chunk):
                if m.start() >= _SCAN_CHUNK:
                    break
                entry = self._entry_at(pos + m.start())
                if entry is not None:
                    return entry
            pos += _SCAN_CHUNK
        return None


class ArchiveWriter:
    """Appends received messages; :meth:`sync` makes them durable (called before the batch is written)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._name: str | None = None
        self._file: BinaryIO | None = None

    def append(self, raw: bytes, received_ms: int) -> str:
        """Append one message; returns where its entry starts: ``<day file>@<byte position>``."""
        name = day_file(received_ms)
        if name != self._name:
            self.close()
            _cut_torn_tail(self.directory / name)
            self._file = open(self.directory / name, "ab")  # noqa: SIM115 - kept open across appends
            self._name = name
        assert self._file is not None
        pos = self._file.tell()
        self._file.write(b"%d %d\n" % (received_ms, len(raw)))
        self._file.write(raw)  # not concatenated: a large message is not copied
        self._file.write(b"\n")
        return f"{name}@{pos}"

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
            self._name = None


def _cut_torn_tail(path: Path) -> None:
    """Truncate the day file after its last complete entry (a crash can leave a torn one)."""
    if not path.exists():
        return
    with open(path, "r+b") as fh:
        day = _DayFile(fh, path.name)
        end = 0
        for entry in day.entries():
            end = entry.end
        if end < day.size:
            fh.truncate(end)
            os.fsync(fh.fileno())
            log.warning("HL7 archive %s: cut off %d bytes of a torn last entry", path.name, day.size - end)


@dataclass(frozen=True)
class ArchivedMessage:
    file: str
    pos: int  # where this entry starts
    next_pos: int  # where the entry after this one starts: the replay's resume point
    received_ms: int
    raw: bytes


class ArchiveReader:
    """Reads the messages received in [since, until), resuming at (file, pos)."""

    def __init__(self, directory: str | Path, since_ms: int, until_ms: int) -> None:
        self.directory = Path(directory)
        self.since_ms = since_ms
        self.until_ms = until_ms

    def files(self) -> list[str]:
        first = datetime.fromtimestamp(self.since_ms / 1000, UTC).date()
        last = datetime.fromtimestamp(max(self.until_ms - 1, self.since_ms) / 1000, UTC).date()
        names = []
        day = first
        while day <= last:
            name = day.strftime("%Y-%m-%d") + ".hl7"
            if (self.directory / name).exists():
                names.append(name)
            day += timedelta(days=1)
        return names

    def total_bytes(self) -> int:
        return sum((self.directory / name).stat().st_size for name in self.files())

    def read(self, start_file: str | None = None, start_pos: int = 0) -> Iterator[ArchivedMessage]:
        for name in self.files():
            if start_file is not None and name < start_file:
                continue
            pos = start_pos if name == start_file else 0
            with open(self.directory / name, "rb") as fh:
                for entry in _DayFile(fh, name).entries(pos):
                    if self.since_ms <= entry.received_ms < self.until_ms:
                        fh.seek(entry.body)
                        yield ArchivedMessage(name, entry.start, entry.end, entry.received_ms, fh.read(entry.length))
