"""Encoders and decoders per schema: generated and compiled once, cached, with fastavro as
the reference they fall back to (for a value or byte sequence out of the ordinary, and for
a whole schema the generator does not cover)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import fastavro
from fastavro.logical_readers import LOGICAL_READERS
from fastavro.logical_writers import LOGICAL_WRITERS

from common.avro_codegen.decoder import DecoderGenerator
from common.avro_codegen.encoder import EncoderGenerator
from common.avro_codegen.schemas import Unsupported
from common.errors import ConfigError

log = logging.getLogger(__name__)

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes, int], Any]

CODEC_ENV = "AVRO_CODEC"
GENERATED, FASTAVRO = "generated", "fastavro"

_encoders: dict[str, Encoder] = {}
_decoders: dict[tuple[str, str | None], Decoder] = {}


def codec_mode(environ: dict[str, str] | None = None) -> str:
    """``generated`` (the default) or ``fastavro`` (every value through fastavro, for A/B runs)."""
    value = (os.environ if environ is None else environ).get(CODEC_ENV, "").strip().lower() or GENERATED
    if value not in (GENERATED, FASTAVRO):
        raise ConfigError([f"{CODEC_ENV} must be {GENERATED} or {FASTAVRO}, not {value!r}"])
    return value


def reference_encoder(schema: Any) -> Encoder:
    def encode(value: Any) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, value)
        return out.getvalue()
    return encode


def reference_decoder(writer: Any, reader: Any | None) -> Decoder:
    if reader is not None and reader == writer:
        reader = None  # fastavro compares the two on every call; once is enough

    def decode(data: bytes, start: int) -> Any:
        buffer = io.BytesIO(data)
        buffer.seek(start)
        return fastavro.schemaless_reader(buffer, writer, reader)
    return decode


def compile_encoder(schema: Any, mode: str = GENERATED) -> Encoder:
    """The encoder of a parsed schema: ``encode(value) -> bytes``, equal to fastavro's
    ``schemaless_writer`` in bytes and in the exceptions it raises."""
    if mode == FASTAVRO:
        return reference_encoder(schema)
    key = _schema_key(schema)
    encoder = _encoders.get(key)
    if encoder is None:
        try:
            module = EncoderGenerator(schema, LOGICAL_WRITERS).generate()
            module.namespace["reference"] = reference_encoder(schema)
            encoder = _encoders[key] = _published(module.compile(key[:12])["encode"], module.text())
        except Unsupported as why:
            log.info("Avro encoder of %s: fastavro (%s)", _name(schema), why)
            encoder = _encoders[key] = reference_encoder(schema)
    return encoder


def compile_decoder(writer: Any, reader: Any | None = None, mode: str = GENERATED) -> Decoder:
    """The decoder of a parsed writer schema, resolved to a parsed reader schema (None: as
    written): ``decode(data, start) -> value``, equal to fastavro's ``schemaless_reader`` in
    values (dict key order included) and in the exceptions it raises."""
    if mode == FASTAVRO:
        return reference_decoder(writer, reader)
    if reader is not None and reader == writer:
        reader = None
    key = (_schema_key(writer), _schema_key(reader) if reader is not None else None)
    decoder = _decoders.get(key)
    if decoder is None:
        try:
            module = DecoderGenerator(writer, reader, LOGICAL_READERS).generate()
            module.namespace["reference"] = reference_decoder(writer, reader)
            decoder = _decoders[key] = _published(module.compile(key[0][:12])["decode"], module.text())
        except Unsupported as why:
            log.info("Avro decoder of %s: fastavro (%s)", _name(writer), why)
            decoder = _decoders[key] = reference_decoder(writer, reader)
    return decoder


def generated_source(codec: Callable[..., Any]) -> str | None:
    """The Python source a codec was compiled from (None: it is fastavro's)."""
    return getattr(codec, "generated_source", None)


def _published(function: Callable[..., Any], source: str) -> Callable[..., Any]:
    function.generated_source = source  # type: ignore[attr-defined]
    return function


def _schema_key(schema: Any) -> str:
    """The whole schema (defaults, logical types and aliases included: the fingerprint of the
    canonical form leaves them out), minus fastavro's bookkeeping."""
    text = json.dumps(_without_bookkeeping(schema), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _without_bookkeeping(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_bookkeeping(v) for k, v in schema.items() if not k.startswith("__fastavro")
                and k != "__named_schemas"}
    if isinstance(schema, list):
        return [_without_bookkeeping(item) for item in schema]
    return schema


def _name(schema: Any) -> str:
    return str(schema.get("name", schema.get("type"))) if isinstance(schema, dict) else str(schema)
