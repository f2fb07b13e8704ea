"""What the generated code calls: varint tables and the slow paths, kept out of the emitted source.

Every helper raises :class:`Unusual` (or lets an ordinary exception through) when a value
or a byte sequence is outside the fast path; the generated function then hands the whole
value to fastavro, which decides what happens to it.
"""

from __future__ import annotations

import datetime
import struct



class Unusual(Exception):
    """Outside the fast path: the reference codec (fastavro) decides."""


LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1


def _varint(n: int) -> bytes:
    """Unsigned LEB128 of ``n`` (already zigzagged), one byte at a time: for the tables."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Zigzag varints of -64..63 (one byte each), indexed by value + 64.
SMALL_LONG = tuple(_varint((v << 1) ^ (v >> 63)) for v in range(-64, 64))
# Lengths 0..63: one byte each.
SMALL_LENGTH = tuple(_varint(n << 1) for n in range(64))
# Varints are written 14 bits (two bytes) at a time from these tables: a bit operation on a
# multi-digit int (an epoch-milliseconds timestamp) costs as much as a table lookup, so a
# timestamp takes three lookups instead of eighteen operations. ~1.4 MB.
_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))
_TWO_BYTES_MORE = tuple(bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(0x4000))  # more bytes follow
_LAST = _ONE_BYTE + tuple(bytes((n & 0x7F | 0x80, n >> 7)) for n in range(0x80, 0x4000))  # the last 1-2 bytes


def varint(n: int) -> bytes:
    """Unsigned LEB128 of ``n`` >= 0 (already zigzagged)."""
    if n < 0x4000:
        return _LAST[n]
    if n < 0x10000000:
        return _TWO_BYTES_MORE[n & 0x3FFF] + _LAST[n >> 14]
    if n < 0x40000000000:
        return _TWO_BYTES_MORE[n & 0x3FFF] + _TWO_BYTES_MORE[n >> 14 & 0x3FFF] + _LAST[n >> 28]
    out = []
    while n >= 0x4000:
        out.append(_TWO_BYTES_MORE[n & 0x3FFF])
        n >>= 14
    out.append(_LAST[n])
    return b"".join(out)


def long_bytes(value: object) -> bytes:
    """Zigzag varint of an Avro long (an exact ``int`` in the 64-bit range)."""
    if type(value) is not int or not LONG_MIN <= value <= LONG_MAX:
        raise Unusual
    return varint(value << 1 if value >= 0 else ~value << 1 | 1)


def int_bytes(value: object) -> bytes:
    """Zigzag varint of an Avro int: fastavro's validation allows only 32 bits."""
    if type(value) is not int or not INT_MIN <= value <= INT_MAX:
        raise Unusual
    return varint(value << 1 if value >= 0 else ~value << 1 | 1)


_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


def float_bytes(value: object) -> bytes:
    if type(value) is int:
        value = float(value)
    elif type(value) is not float:
        raise Unusual
    return _pack_float(value)


def double_bytes(value: object) -> bytes:
    if type(value) is int:
        value = float(value)
    elif type(value) is not float:
        raise Unusual
    return _pack_double(value)


# ---------------------------------------------------------------- decoding
# What the first byte of a varint says when the varint is that one byte (b < 0x80):
#   ONE_BYTE_LONG[b]   the long it encodes
#   ONE_BYTE_LENGTH[b] the length or count it encodes, or -1: negative, or more bytes follow
ONE_BYTE_LONG = tuple((b >> 1) ^ -(b & 1) for b in range(0x80))
ONE_BYTE_LENGTH = tuple(b >> 1 if b < 0x80 and not b & 1 else -1 for b in range(0x100))
BOOLEAN_OF_BYTE = {0: False, 1: True}  # fastavro reads any other byte as True: its call


# A six-byte varint (an epoch-milliseconds timestamp) read as three little-endian 16-bit
# words, each looked up in a 64 Ki-entry table: the 14 bits it carries, or -1 when its
# continuation bits are not the ones a six-byte varint has there. One C call and three
# lookups instead of some fifty bytecodes; the top 14 bits come shifted from a table too
# (a shift of a multi-digit int allocates). ~1.8 MB.
_three_words = struct.Struct("<HHH").unpack_from
_FOURTEEN_BITS = tuple(range(0x4000))  # one int object per value, shared by both tables
_WORD_MORE = tuple(_FOURTEEN_BITS[w & 0x7F | (w >> 8 & 0x7F) << 7] if w & 0x8080 == 0x8080 else -1
                   for w in range(0x10000))
_WORD_LAST = tuple(_FOURTEEN_BITS[w & 0x7F | (w >> 8 & 0x7F) << 7] if w & 0x8080 == 0x0080 else -1
                   for w in range(0x10000))
_TOP_SHIFTED = tuple(top << 27 for top in range(0x4000))  # bits 28-41 of the zigzag value, halved


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint of up to 10 bytes whose value fits 64 bits, and the position after it."""
    if len(buf) - pos >= 6:
        first, second, third = _three_words(buf, pos)
        low, middle, top = _WORD_MORE[first], _WORD_MORE[second], _WORD_LAST[third]
        if low >= 0 and middle >= 0 and top >= 0:
            n = middle << 14 | low  # 28 bits: still a one-digit int
            value = _TOP_SHIFTED[top] | n >> 1
            return (~value if n & 1 else value), pos + 6
    return _read_long_bytewise(buf, pos)


def _read_long_bytewise(buf: bytes, pos: int) -> tuple[int, int]:
    """Unrolled up to seven bytes, keeping the low 28 bits and the rest in separate one-digit
    ints until the end: cheaper than shifting a long int."""
    b = buf[pos]
    n = b & 0x7F
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 1
    b = buf[pos + 1]
    n |= (b & 0x7F) << 7
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 2
    b = buf[pos + 2]
    n |= (b & 0x7F) << 14
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 3
    b = buf[pos + 3]
    n |= (b & 0x7F) << 21
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 4
    b = buf[pos + 4]
    high = b & 0x7F
    end = pos + 5
    if b >= 0x80:
        b = buf[pos + 5]
        high |= (b & 0x7F) << 7
        end = pos + 6
        if b >= 0x80:
            b = buf[pos + 6]
            high |= (b & 0x7F) << 14
            end = pos + 7
            if b >= 0x80:
                return _read_long_tail(buf, pos + 7, high << 28 | n)
    value = high << 27 | n >> 1
    return (~value if n & 1 else value), end


def _read_long_tail(buf: bytes, pos: int, n: int) -> tuple[int, int]:
    shift = 49
    while True:
        b = buf[pos]
        n |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise Unusual  # over 10 bytes: fastavro's C reader wraps around
    if n >> 64:
        raise Unusual
    return (n >> 1) ^ -(n & 1), pos


def read_length(buf: bytes, pos: int) -> tuple[int, int]:
    """A string or bytes length: never negative."""
    n, pos = read_long(buf, pos)
    if n < 0:
        raise Unusual
    return n, pos


def read_block_count(buf: bytes, pos: int) -> tuple[int, int]:
    """The item count of an array or map block; a negative count is followed by the block's
    size in bytes, which is skipped."""
    count, pos = read_long(buf, pos)
    if count < 0:
        count = -count
        pos = read_long(buf, pos)[1]
    return count, pos


# Logical types read the way fastavro's LOGICAL_READERS do (a unit test holds them equal);
# timestamp-millis through common.millis, whose names the decoder adds itself.
timedelta = datetime.timedelta

unpack_float = struct.Struct("<f").unpack_from
unpack_double = struct.Struct("<d").unpack_from
