from __future__ import annotations

import copy
import json
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from common.avro_codegen import generated_source
from common.errors import RetriableError
from common.serde import RegistrySerde, SchemaRepository, SerializationError, SingleObjectSerde, avro_fingerprint
from tests.support.test_connectors import LAB_RESULT, lab_result

ROOT = Path(__file__).resolve().parents[3]


def test_fingerprint_matches_the_avro_specification_test_vector() -> None:
    # Avro's reference implementation: the Rabin fingerprint of "null" is 7195948357588979594.
    assert int.from_bytes(avro_fingerprint("null"), "little") == 7195948357588979594  # type: ignore[arg-type]


def test_single_object_encoding_has_marker_fingerprint_and_body() -> None:
    serde = SingleObjectSerde()
    data = serde.encode("lab-results", LAB_RESULT, lab_result(1))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == serde.repository.fingerprint_of(LAB_RESULT)
    value, ref = serde.decode(data)
    assert value["event_id"] == "e1" and ref == f"fp:{data[2:10].hex()}"


def test_old_writer_schema_resolves_to_the_current_reader(tmp_path: Path) -> None:
    current = json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())
    old = copy.deepcopy(current)
    old["fields"] = old["fields"][:12]  # the seed event
    (tmp_path / "lab_result.avsc").write_text(json.dumps(current))
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "lab_result.v1.avsc").write_text(json.dumps(old))
    serde = SingleObjectSerde(SchemaRepository(tmp_path))
    import io

    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), lab_result(7))
    data = b"\xc3\x01" + avro_fingerprint(old) + body.getvalue()
    value, _ = serde.decode(data, LAB_RESULT)
    assert value["event_id"] == "e7" and value["accession"] is None and value["metadata"] == {}


def test_garbage_is_a_serialization_error_without_contents() -> None:
    with pytest.raises(SerializationError) as caught:
        SingleObjectSerde().decode(b"\xc3\x01" + b"\x00" * 8 + b"secret")
    assert "secret" not in str(caught.value)


def test_value_that_does_not_match_the_schema_is_rejected() -> None:
    bad = lab_result(1)
    bad["timestamp"] = "not a number"
    with pytest.raises(SerializationError):
        SingleObjectSerde().encode("lab-results", LAB_RESULT, bad)


def test_registry_wire_format_with_mock_registry() -> None:
    serde = RegistrySerde("mock://unit")
    data = serde.encode("lab-results", LAB_RESULT, lab_result(3))
    assert data[0] == 0
    value, ref = serde.decode(data, LAB_RESULT)
    assert value["event_id"] == "e3" and ref.startswith("id:")
    assert serde.writer_schema(ref)["name"].endswith("LabResult")


@pytest.mark.parametrize("failure, kind", [
    (SchemaRegistryError(503, 50301, "unavailable"), RetriableError),
    (SchemaRegistryError(429, 42901, "too many requests"), RetriableError),
    (ConnectionError("refused"), RetriableError),
    (SchemaRegistryError(404, 40403, "schema not found"), SerializationError),
])
def test_a_registry_that_cannot_answer_is_retried_while_an_unknown_schema_id_is_bad_data(
        failure: Exception, kind: type[Exception]) -> None:
    serde = RegistrySerde("mock://unit-unavailable")

    def get_schema(schema_id: int) -> None:
        raise failure

    serde.client.get_schema = get_schema  # type: ignore[method-assign]
    with pytest.raises(kind):
        serde.decode(b"\x00\x00\x00\x00\x07" + b"\x02")


# ----------------------------------------------------------- generated codecs
def test_both_encodings_write_the_same_bytes_with_the_generated_codec_as_with_fastavro() -> None:
    value = lab_result(11)
    assert SingleObjectSerde(codec="generated").encode("t", LAB_RESULT, value) == \
        SingleObjectSerde(codec="fastavro").encode("t", LAB_RESULT, value)
    generated, reference = RegistrySerde("mock://same-bytes", codec="generated"), \
        RegistrySerde("mock://same-bytes", codec="fastavro")
    for n in range(3):  # the first goes through the registry serializer, the others do not
        assert generated.encode("t", LAB_RESULT, lab_result(n)) == reference.encode("t", LAB_RESULT, lab_result(n))


def test_the_serde_encodes_and_decodes_with_generated_code_once_per_schema() -> None:
    single, registry = SingleObjectSerde(codec="generated"), RegistrySerde("mock://generated", codec="generated")
    for serde in (single, registry):
        for n in range(2):
            value, ref = serde.decode(serde.encode("t", LAB_RESULT, lab_result(n)), LAB_RESULT)
            assert value["event_id"] == f"e{n}"
        assert len(serde._encoders) == 1 and len(serde._resolved) == 1
        encode = next(iter(serde._encoders.values()))[1]
        assert generated_source(encode) is not None
        decoders = [entry[0] if isinstance(entry, tuple) else entry for entry in serde._resolved.values()]
        assert all(generated_source(decoder) is not None for decoder in decoders)


def test_avro_codec_fastavro_uses_fastavro_for_every_value() -> None:
    serde = SingleObjectSerde(codec="fastavro")
    serde.decode(serde.encode("t", LAB_RESULT, lab_result(1)))
    assert generated_source(serde._encoders[LAB_RESULT][1]) is None
    assert all(generated_source(decoder) is None for decoder, _ in serde._resolved.values())


def test_the_avro_codec_setting_is_checked_at_load_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.config import SinkSettings, load_settings
    from common.errors import ConfigError

    monkeypatch.setenv("TOPICS", "t")
    monkeypatch.setenv("AVRO_CODEC", "fast")
    with pytest.raises(ConfigError, match="AVRO_CODEC"):
        load_settings(SinkSettings)
    monkeypatch.setenv("AVRO_CODEC", "fastavro")
    assert load_settings(SinkSettings).avro_codec == "fastavro"


@pytest.mark.parametrize("codec", ["generated", "fastavro"])
def test_a_bad_value_or_body_is_the_same_serialization_error_with_either_codec(codec: str) -> None:
    serde = SingleObjectSerde(codec=codec)
    bad = dict(lab_result(1), status="NOT_A_STATUS")
    with pytest.raises(SerializationError, match="value does not match schema .*LabResult: ValueError"):
        serde.encode("t", LAB_RESULT, bad)
    data = serde.encode("t", LAB_RESULT, lab_result(1))
    with pytest.raises(SerializationError, match="cannot decode Avro body: (EOFError|IndexError)") as caught:
        serde.decode(data[:-3])
    assert "e1" not in str(caught.value)


@pytest.mark.parametrize("codec", ["generated", "fastavro"])
def test_peek_names_the_writer_schema_decode_names_without_decoding(codec: str) -> None:
    serde = SingleObjectSerde(codec=codec)
    data = serde.encode("t", LAB_RESULT, lab_result(1))
    assert serde.peek(data) == serde.decode(data)[1] == f"fp:{data[2:10].hex()}"
    assert serde.peek(data[:12]) == serde.peek(data)  # the body is not read
    with pytest.raises(SerializationError):
        serde.peek(b"\xc3\x01" + b"\x00" * 8)
