"""SkipUnchanged: a retried round does not upload again what it already uploaded, and nothing else."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import IO

import pytest

from common.errors import RetriableError
from connectors.sink_warehouse.storage import SkipUnchanged


class MemoryStorage:
    """Objects in a dict; ``fail_next`` makes the next publish raise (after the upload may have happened)."""

    prefix = ""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.publishes = 0
        self.fail_next = False

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        buffer = io.BytesIO()
        yield buffer
        self.objects[key] = buffer.getvalue()  # S3 may have stored it even when the response is lost
        self.publishes += 1
        if self.fail_next:
            self.fail_next = False
            raise RetriableError("response lost")

    def list_keys(self, folder: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(folder))

    def read_object(self, key: str) -> bytes:
        return self.objects[key]

    def close(self) -> None:
        pass


def put(storage: SkipUnchanged, key: str, body: bytes) -> None:
    with storage.open_object(key) as out:
        out.write(body)


def test_same_bytes_to_the_same_key_are_not_uploaded_again_until_forget() -> None:
    inner = MemoryStorage()
    storage = SkipUnchanged(inner)
    put(storage, "a", b"one")
    put(storage, "a", b"one")
    put(storage, "b", b"one")  # another key
    assert inner.publishes == 2 and storage.skipped == 1
    storage.forget()
    put(storage, "a", b"one")
    assert inner.publishes == 3


def test_other_bytes_are_uploaded_and_remembered() -> None:
    inner = MemoryStorage()
    storage = SkipUnchanged(inner)
    put(storage, "a", b"one")
    put(storage, "a", b"two")
    put(storage, "a", b"one")  # the key holds "two" now
    assert inner.publishes == 3 and inner.objects["a"] == b"one"


def test_a_failed_upload_forgets_what_the_key_held() -> None:
    inner = MemoryStorage()
    storage = SkipUnchanged(inner)
    put(storage, "a", b"one")
    inner.fail_next = True
    with pytest.raises(RetriableError):
        put(storage, "a", b"two")  # stored, but the task cannot know
    put(storage, "a", b"one")
    assert inner.objects["a"] == b"one" and storage.skipped == 0


def test_a_write_that_fails_publishes_nothing_and_the_error_propagates() -> None:
    inner = MemoryStorage()
    storage = SkipUnchanged(inner)
    with pytest.raises(ValueError), storage.open_object("a") as out:
        out.write(b"half")
        raise ValueError("encoding failed")
    assert inner.objects == {} and storage.list_keys("") == []
