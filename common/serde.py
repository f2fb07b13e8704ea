"""Avro serialization in the two encodings the project speaks.

* Embedded (no registry, the default): Avro's *single-object encoding* from the Avro
  specification: ``C3 01`` + the writer schema's CRC-64-AVRO fingerprint (8 bytes,
  little-endian) + the binary body. Fingerprints resolve against the ``.avsc``
  files of the repository (:class:`SchemaRepository`).
* With ``SCHEMA_REGISTRY_URL``: the Confluent wire format (``00`` + 4-byte schema id
  + body), produced by confluent-kafka's ``AvroSerializer`` (subject ``<topic>-value``).

Decoding is the hot path of every sink, so both decoders use fastavro directly with
the writer schema cached by fingerprint / id (the stock ``AvroDeserializer`` is
2-3x slower), and resolve the writer schema to the reader's when a sink declares one.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

from common.errors import PermanentError

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = 0


class SerializationError(PermanentError):
    """A value could not be encoded or decoded (the record goes to the DLQ)."""


def default_schema_dir() -> Path:
    configured = os.environ.get("LABCONNECT_SCHEMAS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "schemas"


def avro_fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, as 8 little-endian bytes."""
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class SchemaRepository:
    """The Avro schemas kept in the repository: current ones by full name, and every
    known version (``schemas/*.avsc`` plus ``schemas/history/**/*.avsc``) by fingerprint."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_schema_dir()
        self._by_name: dict[str, dict[str, Any]] = {}
        self._by_fingerprint: dict[bytes, dict[str, Any]] = {}
        self._fingerprint_of: dict[str, bytes] = {}
        for path in sorted(self.directory.glob("*.avsc")):
            raw = json.loads(path.read_text())
            parsed = self._add(raw)
            name = f"{raw['namespace']}.{raw['name']}" if "namespace" in raw else raw["name"]
            self._by_name[name] = parsed
            self._fingerprint_of[name] = avro_fingerprint(raw)
        for path in sorted(self.directory.glob("history/**/*.avsc")):
            self._add(json.loads(path.read_text()))

    def _add(self, raw: dict[str, Any]) -> dict[str, Any]:
        parsed = fastavro.parse_schema(raw)
        self._by_fingerprint[avro_fingerprint(raw)] = parsed
        return parsed

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def by_name(self, name: str) -> dict[str, Any]:
        try:
            return self._by_name[name]
        except KeyError:
            raise SerializationError(f"unknown schema {name}") from None

    def fingerprint_of(self, name: str) -> bytes:
        self.by_name(name)
        return self._fingerprint_of[name]

    def by_fingerprint(self, fingerprint: bytes) -> dict[str, Any] | None:
        return self._by_fingerprint.get(fingerprint)


class Serde(Protocol):
    def encode(self, topic: str, schema_name: str, value: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes, reader_schema: str | None = None) -> tuple[dict[str, Any], str]:
        """Return (value, writer schema ref) — ref is ``fp:<hex>`` or ``id:<n>``."""
        ...

    def writer_schema(self, ref: str) -> dict[str, Any]: ...

    def peek(self, data: bytes) -> str:
        """The writer schema ref of ``data`` after checking its framing and that the schema
        is known, without decoding the body (see :func:`avro_body_offset`)."""
        ...


def avro_body_offset(schema_ref: str) -> int:
    """Where the Avro body starts in a value whose writer schema is ``schema_ref``:
    after the single-object header (2 + 8 bytes) or the Confluent one (1 + 4)."""
    return 10 if schema_ref.startswith("fp:") else 5


def _encode_body(schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(out, schema, value)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # fastavro names the field but may echo the value: keep only the class.
        raise SerializationError(f"value does not match schema {schema.get('name')}: {type(exc).__name__}") from None
    return out.getvalue()


class SingleObjectSerde:
    """The embedded default: Avro single-object encoding against the repo's schemas."""

    def __init__(self, repository: SchemaRepository | None = None) -> None:
        self.repository = repository or SchemaRepository()
        self._prefix: dict[str, bytes] = {}
        self._resolved: dict[tuple[bytes, str | None], tuple[dict[str, Any], dict[str, Any] | None, str]] = {}
        self._peeked: dict[bytes, str] = {}

    def encode(self, topic: str, schema_name: str, value: dict[str, Any]) -> bytes:
        prefix = self._prefix.get(schema_name)
        if prefix is None:
            prefix = self._prefix[schema_name] = SINGLE_OBJECT_MARKER + self.repository.fingerprint_of(schema_name)
        return prefix + _encode_body(self.repository.by_name(schema_name), value)

    def decode(self, data: bytes, reader_schema: str | None = None) -> tuple[dict[str, Any], str]:
        writer, reader, ref = self._resolve(data, reader_schema)
        return _read(data, 10, writer, reader), ref

    def peek(self, data: bytes) -> str:
        ref = self._peeked.get(data[:10])  # marker + fingerprint: one slice and one lookup per record
        if ref is None:
            ref = self._resolve(data, None)[2]
            self._peeked[data[:10]] = ref
        return ref

    def _resolve(self, data: bytes, reader_schema: str | None) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
        if data[:2] != SINGLE_OBJECT_MARKER or len(data) < 10:
            raise SerializationError("not Avro single-object encoded (missing C3 01 marker)")
        fp = data[2:10]
        cached = self._resolved.get((fp, reader_schema))
        if cached is None:
            writer = self.repository.by_fingerprint(fp)
            if writer is None:
                raise SerializationError(f"unknown writer schema fingerprint {fp.hex()}")
            reader = self.repository.by_name(reader_schema) if reader_schema else None
            if reader is not None and reader is writer:
                reader = None
            cached = self._resolved[(fp, reader_schema)] = (writer, reader, f"fp:{fp.hex()}")
        return cached

    def writer_schema(self, ref: str) -> dict[str, Any]:
        schema = self.repository.by_fingerprint(bytes.fromhex(ref[3:]))
        if schema is None:
            raise SerializationError(f"unknown writer schema {ref}")
        return schema


def _read(data: bytes, start: int, writer: dict[str, Any], reader: dict[str, Any] | None) -> dict[str, Any]:
    buffer = io.BytesIO(data)
    buffer.seek(start)
    try:
        value = fastavro.schemaless_reader(buffer, writer, reader)
    except Exception as exc:  # truncated or corrupt body, or unresolvable schemas
        raise SerializationError(f"cannot decode Avro body: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise SerializationError("Avro value is not a record")
    return value


class RegistrySerde:
    """Confluent wire format through confluent-kafka's Schema Registry client."""

    def __init__(self, url: str, auto_register: bool = True, repository: SchemaRepository | None = None,
                 client_config: dict[str, Any] | None = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.repository = repository or SchemaRepository()
        conf = {"url": url, **(client_config or {})}
        # new_client() understands mock:// (an in-memory registry for tests).
        factory = getattr(SchemaRegistryClient, "new_client", SchemaRegistryClient)
        self.client = factory(conf)
        self.auto_register = auto_register
        self._serializers: dict[tuple[str, str], Callable[[Any, Any], bytes]] = {}
        self._writers: dict[int, dict[str, Any]] = {}
        self._resolved: dict[tuple[int, str | None], tuple[dict[str, Any], dict[str, Any] | None]] = {}

    def encode(self, topic: str, schema_name: str, value: dict[str, Any]) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = self._serializers.get((topic, schema_name))
        if serializer is None:
            from confluent_kafka.schema_registry.avro import AvroSerializer

            schema_path = self._schema_file(schema_name)
            serializer = AvroSerializer(
                self.client, schema_path.read_text(),
                conf={"auto.register.schemas": self.auto_register, "use.latest.version": not self.auto_register},
            )
            self._serializers[(topic, schema_name)] = serializer
        try:
            return serializer(value, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            _raise_if_registry_unavailable(exc)
            raise SerializationError(f"cannot serialize for {topic}: {type(exc).__name__}") from None

    def _schema_file(self, schema_name: str) -> Path:
        self.repository.by_name(schema_name)
        short = schema_name.rsplit(".", 1)[-1]
        for path in self.repository.directory.glob("*.avsc"):
            if json.loads(path.read_text()).get("name") == short:
                return path
        raise SerializationError(f"unknown schema {schema_name}")

    def _writer(self, schema_id: int) -> dict[str, Any]:
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                registered = self.client.get_schema(schema_id)
            except Exception as exc:
                _raise_if_registry_unavailable(exc)
                raise SerializationError(f"unknown writer schema id {schema_id}: {type(exc).__name__}") from None
            writer = self._writers[schema_id] = fastavro.parse_schema(json.loads(registered.schema_str))
        return writer

    def peek(self, data: bytes) -> str:
        schema_id = self._schema_id(data)
        self._writer(schema_id)  # unknown id: SerializationError; registry down: RetriableError
        return f"id:{schema_id}"

    @staticmethod
    def _schema_id(data: bytes) -> int:
        if len(data) < 5 or data[0] != CONFLUENT_MAGIC:
            raise SerializationError("not in Confluent wire format (missing magic byte)")
        return int(struct.unpack(">I", data[1:5])[0])

    def decode(self, data: bytes, reader_schema: str | None = None) -> tuple[dict[str, Any], str]:
        schema_id = self._schema_id(data)
        cached = self._resolved.get((schema_id, reader_schema))
        if cached is None:
            writer = self._writer(schema_id)
            reader = self.repository.by_name(reader_schema) if reader_schema else None
            cached = self._resolved[(schema_id, reader_schema)] = (writer, reader)
        writer, reader = cached
        return _read(data, 5, writer, reader), f"id:{schema_id}"

    def writer_schema(self, ref: str) -> dict[str, Any]:
        return self._writer(int(ref[3:]))


def _raise_if_registry_unavailable(exc: Exception) -> None:
    """A registry that cannot answer (network, timeout, 5xx, 429) is not the record's fault:
    raise RetriableError so the record is retried rather than dead-lettered."""
    from common.errors import RetriableError, is_retriable

    status = getattr(exc, "http_status_code", None)
    if type(exc).__name__ == "SchemaRegistryError" and isinstance(status, int):
        if status >= 500 or status == 429:
            raise RetriableError(f"schema registry unavailable ({status})") from None
        return
    if is_retriable(exc):
        raise RetriableError(f"schema registry unreachable ({type(exc).__name__})") from None


def make_serde(schema_registry_url: str | None, auto_register: bool = True,
               client_config: dict[str, Any] | None = None) -> SingleObjectSerde | RegistrySerde:
    """The serde the configuration asks for: the registry's if a URL is set, else embedded.
    ``client_config``: the registry client's properties (``ssl.ca.location``, ``basic.auth.user.info``...)."""
    if schema_registry_url:
        return RegistrySerde(schema_registry_url, auto_register, client_config=client_config)
    return SingleObjectSerde()
