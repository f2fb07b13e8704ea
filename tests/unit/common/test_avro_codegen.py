"""The generated Avro codecs against fastavro, the reference: the same bytes, the same decoded
values (types and dict key order included), the same exception for whatever either refuses.

Over every schema in schemas/ (and schemas/history/) and a kitchen-sink schema that has
every Avro feature, with valid values, spoiled values and corrupted bytes.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import json
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.logical_readers import LOGICAL_READERS
from fastavro.logical_writers import LOGICAL_WRITERS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.avro_codegen import (
    compile_decoder,
    compile_encoder,
    generated_source,
    reference_decoder,
    reference_encoder,
)
from common.avro_codegen.decoder import INLINE_LOGICAL, DecoderGenerator
from common.avro_codegen.encoder import EncoderGenerator
from common.avro_codegen.decoder import RUNTIME_NAMES
from common.avro_codegen.runtime import int_bytes, long_bytes, read_long
from common.millis import utc_from_millis
from common.avro_codegen.union_choice import CONVERTED_BY, FAST_TYPES
from tests.support.avro_values import (
    KITCHEN_SINK,
    KITCHEN_SINK_READER,
    ODD_VALUES,
    FASTAVRO_CASES,
    single_field_record,
    comparable,
    outcome,
    spoiled,
    values,
)

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_FILES = sorted((ROOT / "schemas").glob("*.avsc")) + sorted((ROOT / "schemas").glob("history/**/*.avsc"))
SCHEMAS = {path.relative_to(ROOT / "schemas").as_posix(): fastavro.parse_schema(json.loads(path.read_text()))
           for path in SCHEMA_FILES}
SCHEMAS["kitchen-sink"] = fastavro.parse_schema(copy.deepcopy(KITCHEN_SINK))
FAST_PATH_NAMES = sorted(SCHEMAS)
for _case, _type in FASTAVRO_CASES.items():  # these leave some values to fastavro
    SCHEMAS[f"case {_case}"] = fastavro.parse_schema(single_field_record(_case, copy.deepcopy(_type)))
NAMES = sorted(SCHEMAS)

# Writer → reader pairs: each history version read as the current schema of its name, the
# LabResult seed (its first 12 fields) read as today's, and the kitchen sink's later version.
_current = {schema["name"]: schema for name, schema in SCHEMAS.items() if "/" not in name}
_seed = json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())
_seed["fields"] = _seed["fields"][:12]
PAIRS: dict[str, tuple[Any, Any]] = {
    name: (schema, _current[schema["name"]]) for name, schema in SCHEMAS.items() if "/" in name
}
PAIRS["lab_result seed"] = (fastavro.parse_schema(_seed), _current["com.drdangslab.events.LabResult"])
PAIRS["kitchen-sink v2"] = (SCHEMAS["kitchen-sink"], fastavro.parse_schema(copy.deepcopy(KITCHEN_SINK_READER)))


def _record_of(name: str, field_type: Any) -> Any:
    return fastavro.parse_schema({"type": "record", "name": name, "namespace": "test.pairs",
                                  "fields": [{"name": "value", "type": field_type}]})


_colour = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}
PAIRS["enum symbol without reader default"] = (
    _record_of("E", _colour), _record_of("E", dict(_colour, symbols=["RED", "GREEN"])))
_x = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}
PAIRS["reader union with an aliased record first"] = (
    _record_of("U", _x),
    _record_of("U", [{"type": "record", "name": "Y", "aliases": ["X"], "fields": [{"name": "a", "type": "long"}]},
                     dict(_x, fields=[{"name": "a", "type": "double"}])]))
PAIR_NAMES = sorted(PAIRS)

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.data_too_large])


@st.composite
def schema_and_value(draw: st.DrawFn, names: list[str]) -> tuple[str, Any]:
    name = draw(st.sampled_from(names))
    return name, draw(values(SCHEMAS[name]))


def _encoded(schema: Any, value: Any) -> bytes | None:
    try:
        return reference_encoder(schema)(value)
    except Exception:  # noqa: BLE001 - a value fastavro refuses has nothing to decode
        return None


# ------------------------------------------------------------------- coverage
@pytest.mark.parametrize("name", NAMES)
def test_every_schema_gets_generated_code_not_the_fastavro_fallback(name: str) -> None:
    assert generated_source(compile_encoder(SCHEMAS[name])) is not None
    assert generated_source(compile_decoder(SCHEMAS[name])) is not None


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_every_resolution_pair_gets_generated_code(name: str) -> None:
    assert generated_source(compile_decoder(*PAIRS[name])) is not None


def _without_fallback(module: Any, entry: str) -> Any:
    """The generated function with its fastavro fallback replaced by a failure."""
    def fell_back(*args: Any) -> None:
        raise AssertionError("fell back to fastavro")
    module.namespace["reference"] = fell_back
    return module.compile("no-fallback")[entry]


@EXAMPLES
@given(st.data())
def test_valid_values_take_the_generated_path_not_the_fallback(data: st.DataObject) -> None:
    schema = SCHEMAS[data.draw(st.sampled_from(FAST_PATH_NAMES))]
    value = data.draw(values(schema))
    encoded = _without_fallback(EncoderGenerator(schema, LOGICAL_WRITERS).generate(), "encode")(value)
    assert encoded == reference_encoder(schema)(value)


@EXAMPLES
@given(st.data())
def test_well_formed_bytes_take_the_generated_path_not_the_fallback(data: st.DataObject) -> None:
    # (kitchen-sink v2 reads bytes as a string: arbitrary bytes are fastavro's to refuse)
    pairs = [(SCHEMAS[name], None) for name in FAST_PATH_NAMES] + [
        PAIRS[name] for name in ("lab_result seed", "history/patient.v1.avsc")]
    writer, reader = data.draw(st.sampled_from(pairs))
    encoded = _encoded(writer, data.draw(values(writer)))
    if encoded is None:
        return
    decode = _without_fallback(DecoderGenerator(writer, reader, LOGICAL_READERS).generate(), "decode")
    assert comparable(decode(encoded, 0)) == comparable(reference_decoder(writer, reader)(encoded, 0))


# ------------------------------------------------------------------- encoding
@EXAMPLES
@given(st.data())
def test_encoding_a_valid_value_gives_fastavros_bytes(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NAMES))
    schema = SCHEMAS[name]
    value = data.draw(values(schema))
    expected = outcome(reference_encoder(schema), value)
    assert outcome(compile_encoder(schema), value) == expected
    if name in FAST_PATH_NAMES:  # not "case date_or_text": fastavro refuses text that is not a date there
        assert expected[0] == "ok"


@EXAMPLES
@given(st.data())
def test_a_spoiled_value_gives_fastavros_bytes_or_fastavros_error(data: st.DataObject) -> None:
    schema = SCHEMAS[data.draw(st.sampled_from(NAMES))]
    value = data.draw(spoiled(values(schema)))
    assert outcome(compile_encoder(schema), value) == outcome(reference_encoder(schema), value)


@pytest.mark.parametrize("odd", ODD_VALUES, ids=[repr(v)[:20] for v in ODD_VALUES])
def test_each_odd_value_in_each_kitchen_sink_field_matches_fastavro(odd: Any) -> None:
    schema = SCHEMAS["kitchen-sink"]
    base = _plain_kitchen_sink_value()
    assert outcome(compile_encoder(schema), base) == outcome(reference_encoder(schema), base)
    assert outcome(reference_encoder(schema), base)[0] == "ok"
    for field in schema["fields"]:
        value = dict(base, **{field["name"]: odd})
        assert outcome(compile_encoder(schema), value) == outcome(reference_encoder(schema), value), field["name"]


def _plain_kitchen_sink_value() -> dict[str, Any]:
    return {
        "null_field": None, "flag": True, "small": 7, "big": 1 << 40, "ratio": 0.5, "amount": 2.25, "blob": b"\x00",
        "text": "héllo", "colour": "GREEN", "digest": b"0123456789abcdef", "numbers": [1, -2], "labels": {"a": "b"},
        "address": {"street": "Main"}, "chain": {"value": 1, "next": {"value": 2}}, "number": 5,
        "float_or_double": 1.5, "float_then_long": 3, "flag_or_int": False, "symbol_or_text": "BLUE",
        "digest_or_bytes": b"x" * 16, "bytes_or_digest": b"y" * 16, "list_or_map": {"k": 1},
        "created": datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone.utc),
        "created_micros": 5, "observed": 1_700_000_000_000, "local_time": datetime.datetime(2024, 5, 6, 7, 8),
        "birth_date": datetime.date(1990, 1, 2), "at_millis": datetime.time(1, 2, 3),
        "at_micros": 12, "id": "6f1c3a52-2b8e-5d7a-9c41-0d3e2f7b8a10", "price": decimal.Decimal("12.34"),
        "unknown_logical": "x",
    }


def test_the_encoder_does_not_change_the_value_it_is_given() -> None:
    value = _plain_kitchen_sink_value()
    before = copy.deepcopy(value)
    compile_encoder(SCHEMAS["kitchen-sink"])(value)
    assert value == before


# ------------------------------------------------------------------- decoding
@EXAMPLES
@given(st.data())
def test_decoding_gives_fastavros_value_and_key_order(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NAMES))
    schema = SCHEMAS[name]
    encoded = _encoded(schema, data.draw(values(schema)))
    if encoded is None:
        return
    start = data.draw(st.integers(0, 3))
    framed = b"\xc3\x01\x00"[:start] + encoded + data.draw(st.binary(max_size=3))  # a header before, junk after
    expected = outcome(reference_decoder(schema, None), framed, start)
    if name in FAST_PATH_NAMES:  # not "case uuid_or_text": "" is written as a uuid, which fastavro cannot read back
        assert expected[0] == "ok"
    assert outcome(compile_decoder(schema), framed, start) == expected


@EXAMPLES
@given(st.data())
def test_round_trip_through_both_generated_codecs_equals_fastavros(data: st.DataObject) -> None:
    schema = SCHEMAS[data.draw(st.sampled_from(NAMES))]
    value = data.draw(values(schema))
    encoded = _encoded(schema, value)
    if encoded is None:
        return
    assert compile_encoder(schema)(value) == encoded
    assert outcome(compile_decoder(schema), encoded, 0) == outcome(reference_decoder(schema, None), encoded, 0)


@EXAMPLES
@given(st.data())
def test_corrupted_bytes_give_fastavros_value_or_fastavros_error(data: st.DataObject) -> None:
    schema = SCHEMAS[data.draw(st.sampled_from(NAMES))]
    encoded = _encoded(schema, data.draw(values(schema)))
    if not encoded:
        return
    corrupted = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.integers(0, len(corrupted)))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "drop"]))
        if how == "cut":
            del corrupted[where:]
        elif how == "insert":
            corrupted[where:where] = data.draw(st.binary(min_size=1, max_size=2))
        elif corrupted and where < len(corrupted):
            if how == "flip":
                corrupted[where] = data.draw(st.integers(0, 255))
            else:
                del corrupted[where]
    body = bytes(corrupted)
    assert outcome(compile_decoder(schema), body, 0) == outcome(reference_decoder(schema, None), body, 0)


@EXAMPLES
@given(st.data())
def test_schema_resolution_gives_fastavros_value(data: st.DataObject) -> None:
    writer, reader = PAIRS[data.draw(st.sampled_from(PAIR_NAMES))]
    encoded = _encoded(writer, data.draw(values(writer)))
    if encoded is None:
        return
    expected = outcome(reference_decoder(writer, reader), encoded, 0)
    assert outcome(compile_decoder(writer, reader), encoded, 0) == expected


def test_schema_resolution_cases_by_hand() -> None:
    writer, reader = PAIRS["kitchen-sink v2"]
    value = _plain_kitchen_sink_value()
    value.update(colour="BLUE", maybe_text="renamed", text_or_null="t", number=5)
    decoded = compile_decoder(writer, reader)(reference_encoder(writer)(value), 0)
    assert comparable(decoded) == comparable(reference_decoder(writer, reader)(reference_encoder(writer)(value), 0))
    assert decoded["colour"] == "PURPLE"                      # a symbol the reader lacks: its default
    assert decoded["maybe_words"] == "renamed"                # a field renamed, found by its alias
    assert decoded["small"] == 7.0 and type(decoded["small"]) is float  # int read as double
    assert decoded["number"] == 5                              # int read as the reader union's long
    assert decoded["text"] == "héllo".encode()                # string read as bytes
    assert decoded["address"] == {"street": "Main", "zip": None, "country": "NL"}
    assert decoded["added_map"] == {"one": 1} and decoded["added_record"]["country"] == "BE"
    assert "amount" not in decoded                              # writer-only fields are dropped
    # fastavro's key order: the writer's fields as the writer orders them, then the defaults
    assert list(decoded)[:2] == ["flag", "small"] and list(decoded)[-5:] == [
        "added_map", "added_record", "added_enum", "added_list", "added_null"]
    value["text_or_null"] = None  # the reader's field is a plain string: fastavro refuses the null
    encoded = reference_encoder(writer)(value)
    assert outcome(compile_decoder(writer, reader), encoded, 0) == outcome(reference_decoder(writer, reader),
                                                                           encoded, 0)
    assert outcome(reference_decoder(writer, reader), encoded, 0)[0] == "error"


def test_a_mutable_default_is_a_fresh_copy_in_each_decoded_value() -> None:
    writer, reader = PAIRS["kitchen-sink v2"]
    encoded = reference_encoder(writer)(_plain_kitchen_sink_value())
    decode = compile_decoder(writer, reader)
    first = decode(encoded, 0)
    first["added_map"]["two"] = 2
    assert decode(encoded, 0)["added_map"] == {"one": 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_every_truncation_of_an_encoding_gives_fastavros_outcome(data: st.DataObject) -> None:
    schema = SCHEMAS[data.draw(st.sampled_from(NAMES))]
    encoded = _encoded(schema, data.draw(values(schema))) or b""
    for end in range(len(encoded)):
        body = encoded[:end]
        assert outcome(compile_decoder(schema), body, 0) == outcome(reference_decoder(schema, None), body, 0), end


@pytest.mark.parametrize("varint", [b"\xff" * 9 + b"\x01", b"\xff" * 9 + b"\x7f", b"\xff" * 10 + b"\x01",
                                    b"\x80" * 9 + b"\x00", b"\xfe" * 9 + b"\x01", b"\x81\x80\x80\x80\x80\x80\x00"])
def test_overlong_varints_read_as_fastavro_reads_them(varint: bytes) -> None:
    for schema in (_record_of("L", "long"), _record_of("S", "string"), _record_of("A", {"type": "array", "items": "int"})):
        body = varint + b"\x00" * 4
        assert outcome(compile_decoder(schema), body, 0) == outcome(reference_decoder(schema, None), body, 0)


def test_a_record_in_a_union_named_otherwise_by_its_type_key_is_fastavros_to_refuse() -> None:
    schema = SCHEMAS["kitchen-sink"]
    value = dict(_plain_kitchen_sink_value(), chain={"value": 1, "-type": "test.sink.Other"})
    assert outcome(compile_encoder(schema), value) == outcome(reference_encoder(schema), value)
    assert outcome(reference_encoder(schema), value)[0] == "error"


def test_an_int_beyond_32_bits_in_a_record_in_a_union_is_fastavros_to_refuse() -> None:
    schema = SCHEMAS["kitchen-sink"]
    value = dict(_plain_kitchen_sink_value(), chain={"value": 1 << 40})
    assert outcome(compile_encoder(schema), value) == outcome(reference_encoder(schema), value)
    assert outcome(reference_encoder(schema), value)[0] == "error"


# ------------------------------------------------------------ building blocks
@given(st.one_of(st.integers(-(10 ** 17), 10 ** 17), st.integers(-(1 << 63), (1 << 63) - 1)))
def test_inline_timestamp_conversions_equal_fastavros_readers(number: int) -> None:
    for key, expression in INLINE_LOGICAL.items():
        code = compile(expression.format(x="value"), key, "eval")
        names = dict(RUNTIME_NAMES)
        assert outcome(eval, code, names, {"value": number}) == outcome(LOGICAL_READERS[key], number, {}, None)


@given(st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-200, 200)))
def test_varints_read_as_fastavro_reads_them(number: int) -> None:
    encoded = reference_encoder("long")(number) + b"\x00"
    assert read_long(encoded, 0) == (number, len(encoded) - 1)


_VARINT_EDGES = [v for bits in (6, 13, 27, 41, 48, 62, 63) for v in (1 << bits, (1 << bits) - 1, -(1 << bits),
                                                                     -(1 << bits) - 1) if -(1 << 63) <= v < 1 << 63]


@given(st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 42), 1 << 42),
                 st.sampled_from(_VARINT_EDGES)))
def test_varints_written_from_the_tables_equal_fastavros(number: int) -> None:
    assert long_bytes(number) == reference_encoder("long")(number)
    if -(1 << 31) <= number < 1 << 31:
        assert int_bytes(number) == reference_encoder("int")(number)
    encoded = long_bytes(number) + b"\x00"
    assert read_long(encoded, 0) == (number, len(encoded) - 1)


@pytest.mark.parametrize("key", sorted(CONVERTED_BY))
def test_a_logical_conversion_passes_other_types_through_unchanged(key: str) -> None:
    # The encoder skips the conversion for a value of the base type, and the union choice
    # counts on values of the other fast types coming out as they went in.
    schema = {"type": key.split("-", 1)[0], "logicalType": key.split("-", 1)[1], "precision": 9, "scale": 2,
              "size": 8}
    samples = {type(None): None, bool: True, int: 5, float: 1.5, str: "abc", bytes: b"ab", dict: {}, list: [],
               datetime.datetime: datetime.datetime(2024, 1, 2), datetime.date: datetime.date(2024, 1, 2),
               datetime.time: datetime.time(1, 2), uuid.UUID: uuid.UUID(int=1), decimal.Decimal: decimal.Decimal("1.5")}
    assert set(samples) == set(FAST_TYPES)
    for pytype, sample in samples.items():
        if pytype not in CONVERTED_BY[key]:
            assert LOGICAL_WRITERS[key](sample, schema) is sample, pytype


@given(st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 42), 1 << 42)),
       st.binary(max_size=4))
def test_varints_read_the_same_at_the_end_of_the_buffer_and_before_any_bytes(number: int, after: bytes) -> None:
    # The six-byte path reads three 16-bit words: it must neither need nor misread what follows.
    encoded = long_bytes(number)
    assert read_long(encoded + after, 0) == (number, len(encoded))
    assert read_long(b"\x00" + encoded + after, 1) == (number, len(encoded) + 1)


def test_a_six_byte_varint_in_a_non_shortest_form_reads_as_fastavro_reads_it() -> None:
    for encoded in (b"\x81\x80\x80\x80\x80\x00", b"\x80\x80\x80\x80\x80\x00", b"\xff\xff\xff\xff\xff\x7f"):
        assert read_long(encoded, 0) == (reference_decoder("long", None)(encoded, 0), 6)


@given(st.integers(-62135596800000, 253402300799999))
def test_utc_from_millis_is_the_exact_sum_of_epoch_and_milliseconds(ms: int) -> None:
    expected = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=ms)
    assert utc_from_millis(ms) == expected and utc_from_millis(ms).tzinfo is expected.tzinfo


@pytest.mark.parametrize("ms", [-62135596800000, -62135596800000 + 16383, 253402300799999, 0, -1])
def test_utc_from_millis_at_the_ends_of_datetimes_range(ms: int) -> None:
    assert utc_from_millis(ms) == datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + \
        datetime.timedelta(milliseconds=ms)


@pytest.mark.parametrize("ms", [-62135596800001, 253402300800000])
def test_utc_from_millis_beyond_datetimes_range_is_an_overflow(ms: int) -> None:
    with pytest.raises(OverflowError):
        utc_from_millis(ms)
