"""Schema-specialised Avro codecs: an encoder per writer schema and a decoder per (writer,
reader) pair, generated as straight-line Python at first use and compiled once.

    compile_encoder(schema)          -> encode(value) -> bytes
    compile_decoder(writer, reader)  -> decode(data, start) -> value

fastavro stays the reference: the generated code handles the ordinary case (values of the
exact builtin types, well-formed bytes) and hands anything else to fastavro, so bytes,
decoded values and exceptions are fastavro's in every case, only faster. A schema the
generator does not cover (more than 64 union branches, nested unions, unknown types) gets
fastavro's codec outright. ``AVRO_CODEC=fastavro`` uses fastavro for everything.

    source.py        the emitted source: functions, constants, fresh names, compile()
    schemas.py       named types and the questions asked of a parsed schema
    union_choice.py  which union branch fastavro's writer takes, per Python type
    resolution.py    which writer types read as which reader types (fastavro's matching)
    encoder.py       the encoder generator
    decoder.py       the decoder generator (schema resolution included)
    runtime.py       varint tables and slow paths the generated code calls
    codec.py         compiling, caching, the fastavro reference, the mode switch
"""

from common.avro_codegen.codec import (
    CODEC_ENV,
    FASTAVRO,
    GENERATED,
    Decoder,
    Encoder,
    codec_mode,
    compile_decoder,
    compile_encoder,
    generated_source,
    reference_decoder,
    reference_encoder,
)
from common.avro_codegen.schemas import Unsupported

__all__ = [
    "CODEC_ENV", "FASTAVRO", "GENERATED", "Decoder", "Encoder", "Unsupported", "codec_mode", "compile_decoder",
    "compile_encoder", "generated_source", "reference_decoder", "reference_encoder",
]
