"""Per-record Avro encode and decode: the generated codecs next to fastavro, same values.

    python bench/avro_codec.py [--records 20000] [--runs 3] [--json FILE]

For LabResult, LabReport and PatientContact events shaped as source-lis writes them (every
field set, an observation time, a metadata entry or two), times fastavro's
``schemaless_writer`` / ``schemaless_reader`` with the parsed schema (what the serde called
before: a BytesIO per value) and the generated encoder / decoder (``common.avro_codegen``),
fastavro and generated one after the other in each of ``--runs`` runs; prints the median µs
per record of each and the speed-up (goal: 2x both ways). Times are the thread's CPU time,
so other work on a shared machine does not count. Checks first that both give the same
bytes and values.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fastavro  # noqa: E402

from common.avro_codegen import compile_decoder, compile_encoder, reference_decoder, reference_encoder  # noqa: E402
from report import add_json_argument, row, write_rows  # noqa: E402

BASE_MS = 1_767_225_600_000  # 2026-01-01


def lab_result(n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=n << 64 | 7)), "event_type": "LAB_RESULT_CREATED",
        "timestamp": BASE_MS + n * 1000, "version": 2, "patient_id": f"MRN{n % 50_000:07d}",
        "test_id": "718-7", "test_name": "Hemoglobin [Mass/volume] in Blood", "result_value": f"{11 + n % 70 / 10:.1f}",
        "unit": "g/dL", "reference_range": "12.0-17.5", "status": "VERIFIED",
        "metadata": {"value_type": "NM"} if n % 4 else {"value_type": "NM", "note": "Specimen slightly hemolyzed"},
        "accession": f"ACC{n // 12:09d}", "loinc_code": "718-7", "abnormal_flag": "L" if n % 5 == 0 else "N",
        "result_status": "F", "report_status": "final", "observed_time": BASE_MS - 3_600_000 + n * 1000,
        "source_system": "lis-main", "source_message_id": f"MSG{n // 12:010d}",
    }


def lab_report(n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=n << 64 | 9)), "event_type": "REPORT_FINAL", "timestamp": BASE_MS + n * 1000,
        "version": 2, "patient_id": f"MRN{n % 50_000:07d}", "accession": f"ACC{n:09d}",
        "test_code": "58410-2", "test_name": "CBC panel - Blood by Automated count", "report_status": "final",
        "result_count": 12, "critical": n % 40 == 0, "ordering_provider_id": f"DR{n % 300:05d}",
        "observed_time": BASE_MS - 3_600_000 + n * 1000, "source_system": "lis-main",
        "source_message_id": f"MSG{n:010d}", "metadata": {} if n % 3 else {"note": "Repeat sample requested"},
    }


def patient_contact(n: int) -> dict[str, Any]:
    return {
        "patient_id": f"MRN{n:07d}", "timestamp": BASE_MS + n * 1000, "phone": f"+3161{n % 10_000_000:07d}",
        "email": f"patient{n}@example.org" if n % 3 else None, "sms_consent": n % 2 == 0, "email_consent": True,
        "time_zone": "Europe/Amsterdam", "language": "nl", "source_system": "lis-main",
        "unknown_fields": ["email"] if n % 3 == 0 else [],
    }


EVENTS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "LabResult": ("lab_result.avsc", lab_result),
    "LabReport": ("lab_report.avsc", lab_report),
    "PatientContact": ("patient.avsc", patient_contact),
}


def per_record_us(function: Callable[..., Any], inputs: list[Any], *extra: Any) -> float:
    gc.collect()
    started = time.thread_time()
    for item in inputs:
        function(item, *extra)
    return (time.thread_time() - started) / len(inputs) * 1e6


STEPS = ("encode fastavro", "encode generated", "decode fastavro", "decode generated")


def measure(records: int, runs: int) -> dict[str, dict[str, float]]:
    """Per event: median µs per record of each step, the speed-ups and the body size."""
    cases = {}
    for name, (file, make) in EVENTS.items():
        schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / file).read_text()))
        values = [make(n) for n in range(records)]
        fast_encode, slow_encode = compile_encoder(schema), reference_encoder(schema)
        fast_decode, slow_decode = compile_decoder(schema), reference_decoder(schema, None)
        bodies = [slow_encode(value) for value in values]
        if [fast_encode(value) for value in values] != bodies:
            raise SystemExit(f"{name}: the generated encoder's bytes differ from fastavro's")
        if any(fast_decode(body, 0) != slow_decode(body, 0) for body in bodies):
            raise SystemExit(f"{name}: the generated decoder's values differ from fastavro's")
        cases[name] = (values, bodies, slow_encode, fast_encode, slow_decode, fast_decode)

    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(runs):
        for name, (values, bodies, slow_encode, fast_encode, slow_decode, fast_decode) in cases.items():
            timings.setdefault((name, "encode fastavro"), []).append(per_record_us(slow_encode, values))
            timings.setdefault((name, "encode generated"), []).append(per_record_us(fast_encode, values))
            timings.setdefault((name, "decode fastavro"), []).append(per_record_us(slow_decode, bodies, 0))
            timings.setdefault((name, "decode generated"), []).append(per_record_us(fast_decode, bodies, 0))

    results = {}
    for name, (values, bodies, *_) in cases.items():
        median = {step: statistics.median(timings[(name, step)]) for step in STEPS}
        results[name] = {**median, "bytes": statistics.mean(len(body) for body in bodies),
                         "encode speed-up": median["encode fastavro"] / median["encode generated"],
                         "decode speed-up": median["decode fastavro"] / median["decode generated"]}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per event type and run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs; the median is printed")
    add_json_argument(parser)
    args = parser.parse_args()
    results = measure(args.records, args.runs)
    print(f"python {sys.version.split()[0]}, fastavro {fastavro.__version__}; {args.records} records per event, "
          f"median of {args.runs} interleaved runs, CPU µs per record")
    print(f"{'event':<15}{'bytes':>6}  {'encode: fastavro':>16}{'generated':>10}{'speed-up':>10}"
          f"  {'decode: fastavro':>16}{'generated':>10}{'speed-up':>10}")
    for name, r in results.items():
        print(f"{name:<15}{r['bytes']:>6.0f}  {r['encode fastavro']:>16.2f}{r['encode generated']:>10.2f}"
              f"{r['encode speed-up']:>9.2f}x  {r['decode fastavro']:>16.2f}{r['decode generated']:>10.2f}"
              f"{r['decode speed-up']:>9.2f}x")
    rows = []
    for name, r in results.items():
        for way in ("encode", "decode"):
            reference = f"{name} {way}, fastavro"
            rows.append(row(reference, 1e6 / r[f"{way} fastavro"], mb_per_s=r["bytes"] / r[f"{way} fastavro"],
                            note="CPU time"))
            rows.append(row(f"{name} {way}, generated", 1e6 / r[f"{way} generated"],
                            mb_per_s=r["bytes"] / r[f"{way} generated"], ceiling=reference, note="CPU time"))
    write_rows(args.json, rows, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
