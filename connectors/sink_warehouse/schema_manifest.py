"""The row schemas a topic's Parquet files were written with, kept in storage beside them.

    <prefix>/topic=<topic>/_schemas/<sha256 of the schema, 32 hex digits>.arrow

One object per row schema of data written to the topic: an Arrow IPC file with no rows
(``pyarrow.ipc.open_file(...).schema`` reads it back). It is written once the first data
file with that schema is encoded and before that file is published, so every schema a
data file of the topic has is in the folder, whichever process wrote it, and a schema
whose records all went to the dead-letter queue is not. The name is a hash of the
content, so writing it again is a no-op and two tasks never overwrite each other's.
Readers skip the folder: its name starts with ``_`` (hidden to Hive, Spark, Athena and
Glue) and no object in it ends in ``.parquet``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pyarrow as pa

from common import RetriableError
from connectors.sink_warehouse.layout import topic_folder
from connectors.sink_warehouse.storage import Storage

FOLDER = "_schemas/"


class SchemaManifest:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._stored: dict[str, set[str]] = {}  # topic -> keys known to be in storage (read or written)
        self._unstored: dict[str, tuple[str, bytes]] = {}  # key -> (topic, file) to write before its data
        # key -> schema read by a load that then failed: a key names its content, so the retry
        # need not read it again (a manifest too big for one deadline still loads).
        self._read: dict[str, pa.Schema] = {}

    def new_schemas(self, topic: str, before_each: Callable[[str], None]) -> dict[str, pa.Schema]:
        """The schemas stored for ``topic`` that this process has not read or written yet, by key.

        All or nothing: a failed listing or read raises RetriableError and marks none of them
        seen, so the next call returns every one again (a schema dropped by a failed load would
        be missing from every later check). ``before_each(step)`` runs before each storage
        request (the flush deadline check)."""
        seen = self._stored.setdefault(topic, set())
        folder = self._folder(topic)
        before_each(f"listing {folder}")
        new = [key for key in self.storage.list_keys(folder) if key.endswith(".arrow") and key not in seen]
        found = {key: self._schema(key, before_each) for key in new}
        seen.update(found)
        for key in found:
            self._read.pop(key, None)
        return found

    def prepare(self, topic: str, schema: pa.Schema) -> str:
        """The key of ``schema`` in ``topic``'s manifest; :meth:`store` writes it unless it is stored."""
        body = _schema_file(schema)
        key = f"{self._folder(topic)}{hashlib.sha256(body).hexdigest()[:32]}.arrow"
        if not self.contains(topic, key):
            self._unstored[key] = (topic, body)
        return key

    def contains(self, topic: str, key: str) -> bool:
        """True if ``key`` is in storage: read from it or written by this process."""
        return key in self._stored.get(topic, ())

    def store(self, key: str, before_each: Callable[[str], None]) -> None:
        """Write a prepared schema unless it is stored. Call once its data is encoded (a schema
        whose records all go to the dead-letter queue stays out) and before that data is
        published. ``before_each(key)`` runs before the write (the flush deadline check)."""
        pending = self._unstored.get(key)
        if pending is None:
            return
        topic, body = pending
        if not self.contains(topic, key):
            before_each(key)
            with self.storage.open_object(key) as out:
                out.write(body)
            self._stored.setdefault(topic, set()).add(key)
        del self._unstored[key]

    def _schema(self, key: str, before_each: Callable[[str], None]) -> pa.Schema:
        schema = self._read.get(key)
        if schema is None:
            before_each(f"reading {key}")
            schema = self._read[key] = _read_schema(key, self.storage.read_object(key))
        return schema

    def _folder(self, topic: str) -> str:
        return topic_folder(self.storage.prefix, topic) + FOLDER


def _schema_file(schema: pa.Schema) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema):
        pass
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _read_schema(key: str, body: bytes) -> pa.Schema:
    try:
        return pa.ipc.open_file(pa.BufferReader(body)).schema
    except (pa.ArrowException, OSError):
        # Not the records' fault: the task retries and, if it stays unreadable, fails visibly.
        raise RetriableError(f"schema manifest {key} is not an Arrow file") from None
