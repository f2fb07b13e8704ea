"""Settings of the warehouse sink (environment variables, see ``common.config``).

When to cut a file is the runtime's job (``FLUSH_MAX_RECORDS``, ``FLUSH_MAX_BYTES``,
``FLUSH_MAX_AGE_MS``, ``FLUSH_IDLE_MS``): every flush closes every open file, so
these are the rotation settings. The warehouse adds where and how files are written.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from common import SinkSettings
from common.config import TimeZoneName

MIB = 1024 * 1024
_MAX_BACKOFF_MS = 25_000  # botocore's cap between attempts, including a Retry-After header


class WarehouseSettings(SinkSettings):
    """Where the warehouse lives, the file format and the time partitioning."""

    topics: str = Field("lab-results", description="Comma-separated topics to archive")
    # Rotation: fewer, larger files than the runtime's defaults (scans favour big files),
    # bounded so that a round's decoded records stay well under 500 MB of memory.
    flush_max_records: int = Field(50_000, ge=1)
    flush_max_bytes: int = Field(32 * MIB, ge=1)
    flush_max_age_ms: int = Field(600_000, ge=1)
    flush_idle_ms: int = Field(60_000, ge=1)
    warehouse_flush_timeout_ms: int = Field(
        90_000, ge=1, description="storage time a round may take before it is retried (see round_time_bound_ms)")
    warehouse_url: str = Field(
        "file://./warehouse", description="s3://bucket/prefix, or file://<dir> (the embedded demo target)"
    )
    s3_endpoint_url: str | None = Field(None, description="MinIO/moto/LocalStack endpoint; unset = AWS")
    s3_region: str | None = None
    s3_part_size_bytes: int = Field(25 * MIB, ge=5 * MIB, description="multipart upload above this size")
    s3_max_attempts: int = Field(3, ge=1, description="SDK attempts per request, the first included (adaptive mode)")
    s3_connect_timeout_ms: int = Field(5_000, ge=100)
    s3_read_timeout_ms: int = Field(30_000, ge=100, description="longest silence of a connection mid-request")
    s3_sse: Literal["", "AES256", "aws:kms"] = Field(
        "", description="server-side encryption of every object: AES256 (SSE-S3) or aws:kms (SSE-KMS)")
    s3_sse_kms_key_id: str | None = Field(None, description="with S3_SSE=aws:kms: the KMS key; unset = aws/s3")
    warehouse_format: Literal["parquet", "avro", "jsonl"] = "parquet"
    parquet_compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    parquet_row_group_size: int = Field(131_072, ge=1, description="rows per Parquet row group")
    warehouse_timestamp_field: str = Field("timestamp", description="value field with the event time (epoch ms)")
    warehouse_timezone: TimeZoneName = Field("UTC", description="IANA zone of the dt=/hour= partitions")
    warehouse_include_headers: bool = False

    @property
    def round_time_bound_ms(self) -> int:
        """The longest a round's storage work can keep the runtime from polling Kafka: the flush
        deadline is checked before each request, so add the longest one request can take (every
        attempt times out; botocore waits at most 20 s + 5 s for Retry-After between attempts).
        Must stay below the consumer's ``max.poll.interval.ms``; the task checks at start."""
        if not self.warehouse_url.startswith("s3://"):
            return self.warehouse_flush_timeout_ms
        attempts = self.s3_max_attempts
        per_attempt = self.s3_connect_timeout_ms + self.s3_read_timeout_ms
        return self.warehouse_flush_timeout_ms + attempts * per_attempt + (attempts - 1) * _MAX_BACKOFF_MS

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> WarehouseSettings:
        # A key id with SSE-S3 or no encryption would be silently ignored: the objects would
        # not be encrypted with the key the operator chose.
        if self.s3_sse_kms_key_id and self.s3_sse != "aws:kms":
            raise ValueError("S3_SSE_KMS_KEY_ID is set but S3_SSE is not aws:kms")
        return self

    @field_validator("warehouse_url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        if value.startswith("s3://"):
            if not value[len("s3://"):].split("/", 1)[0]:
                raise ValueError("s3:// URL needs a bucket")
        elif not value.startswith("file://"):
            raise ValueError("must start with s3:// or file://")
        return value
