"""The HL7 archive: per-day files, window reads, resume positions, torn tails."""

from __future__ import annotations

from pathlib import Path

from connectors.source_lis.archive import ArchiveReader, ArchiveWriter

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_messages_are_filed_per_utc_day_and_read_back_by_window(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    for i in range(6):
        writer.append(f"MSH|{i}\r\nwith any bytes \x00\xff".encode("latin-1"), T0 + i * DAY // 2)
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-01-01.hl7", "2026-01-02.hl7", "2026-01-03.hl7"]
    got = list(ArchiveReader(tmp_path, T0 + DAY // 2, T0 + 2 * DAY).read())
    assert [m.raw[:6] for m in got] == [b"MSH|1\r", b"MSH|2\r", b"MSH|3\r"]
    assert got[0].raw.endswith(b"\x00\xff")


def test_reading_resumes_at_a_file_position(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    for i in range(5):
        writer.append(f"M{i}".encode(), T0 + i)
    writer.close()
    reader = ArchiveReader(tmp_path, T0, T0 + DAY)
    second = list(reader.read())[1]
    assert [m.raw for m in reader.read(second.file, second.next_pos)] == [b"M2", b"M3", b"M4"]


def test_torn_last_entry_is_ignored(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    writer.append(b"GOOD", T0)
    writer.close()
    with open(tmp_path / "2026-01-01.hl7", "ab") as fh:
        fh.write(b"%d 100\nPARTIAL" % T0)
    assert [m.raw for m in ArchiveReader(tmp_path, T0, T0 + DAY).read()] == [b"GOOD"]


def test_writer_reopening_a_day_file_drops_its_torn_tail_so_later_entries_are_read(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    writer.append(b"GOOD", T0)
    writer.close()
    with open(tmp_path / "2026-01-01.hl7", "ab") as fh:  # crash mid-write
        fh.write(b"%d 100\nPARTIAL" % T0)
    writer = ArchiveWriter(tmp_path)  # the restarted task
    writer.append(b"AFTER", T0 + 1)
    writer.close()
    assert [m.raw for m in ArchiveReader(tmp_path, T0, T0 + DAY).read()] == [b"GOOD", b"AFTER"]
    assert b"PARTIAL" not in (tmp_path / "2026-01-01.hl7").read_bytes()


def _entry(raw: bytes, ms: int = T0) -> bytes:
    return b"%d %d\n" % (ms, len(raw)) + raw + b"\n"


def test_reader_resyncs_after_a_torn_entry_in_the_middle_of_a_day(tmp_path: Path) -> None:
    # Files written before the writer repaired torn tails: the torn entry is followed by good ones.
    for torn in (b"%d 100\nPARTIAL\rOBX|1" % T0, b"17672", b"1", b"%d 5\nAB" % T0, b"%d 2\nAB" % T0):
        (tmp_path / "2026-01-01.hl7").write_bytes(_entry(b"ONE") + torn + _entry(b"TWO", T0 + 1) + _entry(b"3\n4"))
        got = list(ArchiveReader(tmp_path, T0, T0 + DAY).read())
        assert [m.raw for m in got] == [b"ONE", b"TWO", b"3\n4"], torn
        # Resuming after the torn entry reads on from there.
        assert [m.raw for m in ArchiveReader(tmp_path, T0, T0 + DAY).read(got[1].file, got[1].next_pos)] == [b"3\n4"]
