"""MLLP framing with a bounded buffer: split reads, noise, frames over the cap, abandoned frames."""

from __future__ import annotations

from connectors.source_lis.mllp_framing import HEAD_BYTES, FrameReader

START, END = b"\x0b", b"\x1c\x0d"


def _feed_in_pieces(reader: FrameReader, data: bytes, size: int) -> list[tuple[bytes, int]]:
    frames = []
    for i in range(0, len(data), size):
        frames += [(f.body, f.size) for f in reader.feed(data[i:i + size])]
    return frames


def test_frames_come_out_whole_whatever_the_read_boundaries() -> None:
    data = b"noise" + b"".join(START + b"MSG%d\r" % i + END for i in range(5)) + b"trailing noise"
    for size in (1, 2, 3, 7, len(data)):
        reader = FrameReader(max_bytes=100)
        assert _feed_in_pieces(reader, data, size) == [(b"MSG%d\r" % i, 5) for i in range(5)]
        assert not reader.in_frame


def test_an_end_block_split_between_reads_is_not_content() -> None:
    reader = FrameReader(max_bytes=100)
    assert reader.feed(START + b"ABC\x1c") == []
    assert [f.body for f in reader.feed(b"\x0dnext")] == [b"ABC"]
    # a 0x1C that is not followed by 0x0D stays in the message
    reader.feed(START + b"A\x1c")
    assert [f.body for f in reader.feed(b"B" + END)] == [b"A\x1cB"]


def test_a_frame_of_exactly_the_cap_is_whole_even_when_its_end_block_is_split() -> None:
    reader = FrameReader(max_bytes=10)
    reader.feed(START + b"0123456789\x1c")
    (frame,) = reader.feed(b"\x0d")
    assert frame.body == b"0123456789" and not frame.truncated


def test_a_frame_over_the_cap_is_read_to_its_end_keeping_only_its_head() -> None:
    reader = FrameReader(max_bytes=10_000)
    body = b"MSH|^~\\&|LIS|LAB\r" + b"x" * 200_000
    frames = []
    held = 0
    for i in range(0, len(body), 4096):
        frames += reader.feed((START if i == 0 else b"") + body[i:i + 4096])
        held = max(held, len(reader._buffer))
    assert held <= 10_000 + 4096, "never more than the cap (and one read) held"
    assert len(reader._buffer) <= HEAD_BYTES
    frames += reader.feed(END + START + b"small" + END)
    assert [(f.body, f.size, f.truncated) for f in frames] == [
        (body[:HEAD_BYTES], len(body), True), (b"small", 5, False)]


def test_an_abandoned_frame_is_released() -> None:
    reader = FrameReader(max_bytes=1 << 20)
    reader.feed(START + b"x" * 500_000)
    assert reader.in_frame and reader.partial_bytes == 500_000
    assert reader.release() == 500_000
    assert not reader.in_frame and len(reader._buffer) == 0
    assert [f.body for f in reader.feed(b"rest of the old frame" + END + START + b"new" + END)] == [b"new"]
