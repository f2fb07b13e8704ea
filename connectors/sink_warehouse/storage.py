"""Where objects go: S3 (or MinIO/moto) and a local directory for the embedded demo.

Both make an object appear whole or not at all, and a second write of a key
replaces the first; exactly-once relies on both (README, "Exactly once").
:meth:`Storage.open_object` yields a binary file to write the object into; the
object is published when the ``with`` block ends without an exception.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from common.errors import RetriableError

MIB = 1024 * 1024


class Storage(Protocol):
    prefix: str

    def open_object(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A file to write ``key`` into; published atomically on a clean exit."""

    def close(self) -> None: ...


class LocalStorage:
    """A directory tree; each object is written to a temporary file beside its final
    name, fsynced, then renamed into place (``os.replace`` is atomic)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.prefix = ""

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        # A dot-name with .tmp suffix: never matched by `**/*.parquet` globs.
        fd, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def close(self) -> None:
        pass


class S3Storage:
    """An S3 bucket and key prefix. Objects are spooled in memory up to one part,
    on disk beyond; above ``part_size`` they go up as a multipart upload."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any, part_size: int = 25 * MIB,
                 sse: str = "", sse_kms_key_id: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.part_size = part_size
        self.transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        self.extra: dict[str, str] = {}
        if sse:
            self.extra["ServerSideEncryption"] = sse
        if sse == "aws:kms" and sse_kms_key_id:
            self.extra["SSEKMSKeyId"] = sse_kms_key_id

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 max_attempts: int = 5, **kwargs: Any) -> S3Storage:
        """``s3://bucket/prefix``; credentials come from boto3's usual chain."""
        import boto3
        from botocore.config import Config

        bucket, _, prefix = url[len("s3://"):].partition("/")
        config = Config(
            retries={"mode": "adaptive", "max_attempts": max_attempts},
            connect_timeout=10, read_timeout=60,
            # MinIO and moto serve buckets on the path, not as virtual hosts.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return cls(bucket, prefix, client=client, **kwargs)

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        with tempfile.SpooledTemporaryFile(max_size=self.part_size) as spool:
            yield spool  # type: ignore[misc]
            size = spool.tell()
            spool.seek(0)
            self._upload(spool, key, size)

    def _upload(self, body: IO[bytes], key: str, size: int) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if size < self.part_size:  # one PUT; skips the transfer manager's thread pool
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body.read(), **self.extra)
            else:
                self.client.upload_fileobj(body, self.bucket, key, ExtraArgs=self.extra, Config=self.transfer)
        except ClientError as exc:
            raise _storage_error(key, exc) from None
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            raise _storage_error(key, cause if isinstance(cause, ClientError) else exc) from None
        except BotoCoreError as exc:
            raise RetriableError(f"S3 upload of {key} failed: {type(exc).__name__}") from None

    def close(self) -> None:
        self.client.close()


def _storage_error(key: str, exc: BaseException) -> RetriableError:
    """Every storage failure is retriable: the records are fine, the store is not.
    (A 403/404 is a misconfiguration; retrying until the runtime gives up fails the
    task instead of sending good records to the dead-letter queue.)"""
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code", type(exc).__name__)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    return RetriableError(f"S3 upload of {key} failed after retries: {code} (HTTP {status})")


def open_storage(url: str, **s3_options: Any) -> Storage:
    """The storage for a ``warehouse_url``: ``file://<dir>`` or ``s3://bucket/prefix``."""
    if url.startswith("file://"):
        return LocalStorage(url[len("file://"):] or ".")
    if url.startswith("s3://"):
        return S3Storage.from_url(url, **s3_options)
    raise ValueError("warehouse URL must start with s3:// or file://")
