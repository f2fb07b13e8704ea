"""Where objects go: S3 (or MinIO/moto) and a local directory for the embedded demo.

Both make an object appear whole or not at all, and a second write of a key
replaces the first; exactly-once relies on both (README, "Exactly once").
:meth:`Storage.open_object` yields a binary file to write the object into; the
object is published when the ``with`` block ends without an exception.
Every storage failure raises :class:`RetriableError`: the records are fine, the store is not.
:class:`SkipUnchanged` wraps either so that a retried round does not upload again
what its failed attempt already uploaded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from common import RetriableError

MIB = 1024 * 1024


class Storage(Protocol):
    prefix: str

    def open_object(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A file to write ``key`` into; published atomically on a clean exit."""

    def list_keys(self, folder: str) -> list[str]:
        """Keys of the objects under ``folder`` (a key prefix ending with ``/``)."""

    def read_object(self, key: str) -> bytes: ...

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
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # A dot-name with .tmp suffix: never matched by `**/*.parquet` globs.
            fd, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        except OSError as exc:
            raise RetriableError(f"cannot write {key}: {_os_error(exc)}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            if isinstance(exc, OSError):  # disk full, also while the caller wrote into `out`
                raise RetriableError(f"cannot write {key}: {_os_error(exc)}") from None
            raise

    def list_keys(self, folder: str) -> list[str]:
        try:
            return sorted(
                str(p.relative_to(self.root)) for p in (self.root / folder).rglob("*")
                if p.is_file() and not p.name.startswith(".")  # skips open_object's temporary files
            )
        except OSError as exc:
            raise RetriableError(f"cannot list {folder}: {_os_error(exc)}") from None

    def read_object(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except OSError as exc:
            raise RetriableError(f"cannot read {key}: {_os_error(exc)}") from None

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
                 max_attempts: int = 3, connect_timeout: float = 5, read_timeout: float = 30,
                 **kwargs: Any) -> S3Storage:
        """``s3://bucket/prefix``; credentials come from boto3's usual chain. The timeouts
        (seconds) and attempts bound how long one request can take (README, "S3")."""
        import boto3
        from botocore.config import Config

        bucket, _, prefix = url[len("s3://"):].partition("/")
        config = Config(
            # total_max_attempts counts the first try; botocore's "max_attempts" would not.
            retries={"mode": "adaptive", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            # MinIO and moto serve buckets on the path, not as virtual hosts.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return cls(bucket, prefix, client=client, **kwargs)

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        try:
            with tempfile.SpooledTemporaryFile(max_size=self.part_size) as spool:
                yield spool  # type: ignore[misc]
                size = spool.tell()
                spool.seek(0)
                self._upload(spool, key, size)
        except OSError as exc:  # the spool file on a full disk, also while the caller wrote into it
            raise RetriableError(f"cannot spool {key}: {_os_error(exc)}") from None

    def _upload(self, body: IO[bytes], key: str, size: int) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if size < self.part_size:  # one PUT; skips the transfer manager's thread pool
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body.read(), **self.extra)
            else:
                self.client.upload_fileobj(body, self.bucket, key, ExtraArgs=self.extra, Config=self.transfer)
        except ClientError as exc:
            raise _storage_error(f"upload of {key}", exc) from None
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            raise _storage_error(f"upload of {key}", cause if isinstance(cause, ClientError) else exc) from None
        except BotoCoreError as exc:
            raise RetriableError(f"S3 upload of {key} failed: {type(exc).__name__}") from None

    def list_keys(self, folder: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(f"listing of {folder}", exc) from None

    def read_object(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(f"download of {key}", exc) from None

    def close(self) -> None:
        self.client.close()


class _Unchanged(Exception):
    """Raised inside the wrapped storage's ``open_object``: cancels a publish that would change nothing."""


class SkipUnchanged:
    """A storage that does not publish a key again with the bytes this process last published
    to it, until :meth:`forget`.

    A round that cannot finish before its deadline is retried from the start with the same
    records, so it produces the same keys with the same bytes: skipping the objects the failed
    attempt published lets every attempt get further, where re-uploading them all would time
    out again. Exactly once holds because a skipped key already has exactly the bytes the
    upload would write: the memory is of this process's own publishes, an upload that may or
    may not have happened (it failed) is forgotten, and the task forgets everything when a
    round ends or partitions are revoked (another task may then write the keys)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.prefix = inner.prefix
        self.skipped = 0  # objects not uploaded again (for logs and tests)
        self._published: dict[str, bytes] = {}  # key -> MD5 of the bytes this process published

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        hashing: _Md5Writer | None = None
        try:
            with self.inner.open_object(key) as out:
                hashing = _Md5Writer(out)
                yield hashing  # type: ignore[misc]
                if self._published.get(key) == hashing.digest():
                    raise _Unchanged
                self._published.pop(key, None)  # if the upload fails, the key's content is unknown
        except _Unchanged:
            self.skipped += 1
            return
        assert hashing is not None
        self._published[key] = hashing.digest()

    def forget(self) -> None:
        """Publish every key again from now on."""
        self._published.clear()

    def list_keys(self, folder: str) -> list[str]:
        return self.inner.list_keys(folder)

    def read_object(self, key: str) -> bytes:
        return self.inner.read_object(key)

    def close(self) -> None:
        self.inner.close()


class _Md5Writer:
    """A binary file that hashes what is written through it (pyarrow, fastavro and the JSON
    encoder only write; anything else goes to the file underneath)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._md5 = hashlib.md5(usedforsecurity=False)

    def write(self, data: bytes) -> int:
        self._md5.update(data)
        return self._out.write(data)

    def digest(self) -> bytes:
        return self._md5.digest()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


def _storage_error(what: str, exc: BaseException) -> RetriableError:
    """Every storage failure is retriable: the records are fine, the store is not.
    (A 403/404 is a misconfiguration; retrying until the runtime gives up fails the
    task instead of sending good records to the dead-letter queue.)"""
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code", type(exc).__name__)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    return RetriableError(f"S3 {what} failed after retries: {code} (HTTP {status})")


def _os_error(exc: OSError) -> str:
    """An OSError without its file name or message text: the class and errno name."""
    return f"{type(exc).__name__} {errno.errorcode.get(exc.errno or 0, '')}".strip()


def open_storage(url: str, **s3_options: Any) -> Storage:
    """The storage for a ``warehouse_url``: ``file://<dir>`` or ``s3://bucket/prefix``."""
    if url.startswith("file://"):
        return LocalStorage(url[len("file://"):] or ".")
    if url.startswith("s3://"):
        return S3Storage.from_url(url, **s3_options)
    raise ValueError("warehouse URL must start with s3:// or file://")
