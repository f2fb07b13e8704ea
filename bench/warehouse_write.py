"""Throughput of the warehouse sink: put + flush of LabResult records into moto's S3
server as Parquet (zstd), in rounds like the runtime's flushes.

    python bench/warehouse_write.py [--records 200000] [--round 50000] [--format parquet]

Records are Avro-encoded first and handed over as the runtime would (untimed): raw
for Parquet, which the task decodes in bulk (timed), decoded for the other formats. Reports records/s, MB/s of Avro
input and of objects written, and peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.records import SinkRecord  # noqa: E402
from common.serde import SingleObjectSerde  # noqa: E402
from connectors.sink_warehouse.settings import WarehouseSettings  # noqa: E402
from connectors.sink_warehouse.task import WarehouseSinkTask  # noqa: E402

T0 = 1_718_000_000_000


class _Context:
    connector_name = "sink-warehouse"
    task_id = 0

    def __init__(self, serde: SingleObjectSerde) -> None:
        self.serde = serde

    def writer_schema(self, ref: str) -> dict:  # type: ignore[type-arg]
        return self.serde.writer_schema(ref)

    def decode(self, raw_value: bytes) -> dict:  # type: ignore[type-arg]
        return self.serde.decode(raw_value)[0]

    def report(self, record: SinkRecord, error: BaseException, stage: str = "TASK_PUT") -> None:
        raise error  # the benchmark's values are all valid


def encode_values(n: int, serde: SingleObjectSerde) -> list[bytes]:
    """Avro single-object encoded LabResults, as they sit in the topic."""
    out = []
    for i in range(n):
        ts = T0 + i * 50  # 200k records span ~2.8 hours: several time partitions
        value = {
            "event_id": f"5f0c7c1e-{i:08d}-4a1b-9f7e-000000000000", "event_type": "LAB_RESULT_CREATED",
            "timestamp": ts, "version": 1, "patient_id": f"P{i % 50_000:07d}", "test_id": "718-7",
            "test_name": "Hemoglobin", "result_value": f"{12 + i % 5}.{i % 10}", "unit": "g/dL",
            "reference_range": "12.0-17.5", "status": "VERIFIED", "metadata": {"site": "north"},
            "accession": f"ACC{i // 20:09d}", "loinc_code": "718-7", "abnormal_flag": None if i % 7 else "H",
            "result_status": "F", "report_status": "final", "observed_time": ts - 60_000,
            "source_system": "LIS1", "source_message_id": f"MSG{i // 20:09d}",
        }
        out.append(serde.encode("lab-results", "com.drdangslab.events.LabResult", value))
    return out


def decode_round(raws: list[bytes], first: int, partitions: int, serde: SingleObjectSerde,
                 raw_values: bool) -> list[SinkRecord]:
    """What the runtime hands to put(): record i is offset i // partitions of partition i % partitions."""
    records = []
    for i, raw in enumerate(raws, start=first):
        value, ref = serde.decode(raw)
        key = value["patient_id"]
        records.append(SinkRecord("lab-results", i % partitions, i // partitions, value["timestamp"], key,
                                  None if raw_values else value, key.encode(), raw, [], ref))
    return records


def calibrate() -> float:
    """Seconds for a fixed pure-Python loop: compare runs across (shared) machines."""
    start = time.perf_counter()
    sum(range(10_000_000))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--round", type=int, default=50_000, help="records per flush")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--format", default="parquet", choices=["parquet", "avro", "jsonl"])
    parser.add_argument("--target", default="s3", choices=["s3", "local"])
    args = parser.parse_args()

    serde = SingleObjectSerde()
    raws = encode_values(args.records, serde)
    raw_bytes = sum(map(len, raws))

    server = None
    if args.target == "s3":
        import boto3

        from devstack.s3 import start_s3

        server = start_s3()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1").create_bucket(Bucket="bench")
        settings = WarehouseSettings(warehouse_url="s3://bench/warehouse", s3_endpoint_url=server.endpoint_url,
                                     s3_region="us-east-1", warehouse_format=args.format)
    else:
        import tempfile

        settings = WarehouseSettings(warehouse_url=f"file://{tempfile.mkdtemp()}", warehouse_format=args.format)
    try:
        task = WarehouseSinkTask(settings)
        task.start(_Context(serde))
        written = 0
        original_open = task.storage.open_object  # type: ignore[union-attr]

        def counting_open(key: str):  # type: ignore[no-untyped-def]
            # Count object bytes as they are written, without a second pass.
            import contextlib

            @contextlib.contextmanager
            def wrapped():  # type: ignore[no-untyped-def]
                nonlocal written
                with original_open(key) as out:
                    yield out
                    written += out.tell()
            return wrapped()

        task.storage.open_object = counting_open  # type: ignore[union-attr,method-assign]
        # Only put + flush are timed; decoding is the runtime's and happens per round,
        # so at most one round of decoded records is alive, as in the runtime.
        elapsed = 0.0
        for begin in range(0, len(raws), args.round):
            records = decode_round(raws[begin:begin + args.round], begin, args.partitions, serde, task.raw_values)
            start = time.perf_counter()
            task.put(records)
            task.flush({})
            elapsed += time.perf_counter() - start
            del records
        task.stop()
    finally:
        if server is not None:
            server.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.records} records, {args.format} -> {args.target}, rounds of {args.round}: {elapsed:.2f} s")
    print(f"  {args.records / elapsed:,.0f} records/s")
    print(f"  {raw_bytes / elapsed / 1e6:.1f} MB/s of Avro input ({raw_bytes / args.records:.0f} B/record)")
    print(f"  {written / elapsed / 1e6:.1f} MB/s of objects written ({written / 1e6:.1f} MB total)")
    print(f"  peak RSS {peak_mb:.0f} MB (includes the encoded input and one decoded round)")
    print(f"  calibration: sum(range(10**7)) takes {calibrate():.2f} s on this machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
