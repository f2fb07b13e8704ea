"""The HL7 archive: every received message, append-only, one file per UTC day.

It is the LIS's history for replays (``labconnect replay source-lis``): HL7 senders
cannot be asked to re-send a window. Each entry is a header line
``<received epoch ms> <length>\\n`` then the raw bytes and ``\\n``, so any encoding
round-trips unchanged and a torn last entry (crash mid-write) is detected and skipped.
Files are ``YYYY-MM-DD.hl7``; retention is the operator's (delete old days).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO


def day_file(received_ms: int) -> str:
    return datetime.fromtimestamp(received_ms / 1000, UTC).strftime("%Y-%m-%d") + ".hl7"


class ArchiveWriter:
    """Appends received messages; :meth:`sync` makes them durable (called before the batch is written)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._name: str | None = None
        self._file: BinaryIO | None = None

    def append(self, raw: bytes, received_ms: int) -> None:
        name = day_file(received_ms)
        if name != self._name:
            self.close()
            self._file = open(self.directory / name, "ab")  # noqa: SIM115 - kept open across appends
            self._name = name
        assert self._file is not None
        self._file.write(b"%d %d\n" % (received_ms, len(raw)) + raw + b"\n")

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


@dataclass(frozen=True)
class ArchivedMessage:
    file: str
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
                fh.seek(pos)
                while True:
                    header = fh.readline()
                    if not header.endswith(b"\n"):
                        break  # end of file, or a torn header
                    try:
                        received_s, length_s = header.split()
                        received, length = int(received_s), int(length_s)
                    except ValueError:
                        break  # corrupt tail: nothing after it can be trusted
                    raw = fh.read(length + 1)
                    if len(raw) != length + 1:
                        break
                    pos = fh.tell()
                    if self.since_ms <= received < self.until_ms:
                        yield ArchivedMessage(name, pos, received, raw[:-1])
