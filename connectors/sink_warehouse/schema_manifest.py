"""The row schemas a topic's Parquet files were written with, kept in storage beside them.

    <prefix>/topic=<topic>/_schemas/<sha256 of the schema, 32 hex digits>.arrow

One object per row schema ever written to the topic: an Arrow IPC file with no rows
(``pyarrow.ipc.open_file(...).schema`` reads it back). It is written before the first
data file with that schema, so every schema a data file of the topic has is in the
folder, whichever process wrote it. The name is a hash of the content, so writing it
again is a no-op and two tasks never overwrite each other's. Readers skip the folder:
its name starts with ``_`` (hidden to Hive, Spark, Athena and Glue) and no object in
it ends in ``.parquet``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pyarrow as pa

from common.errors import RetriableError
from connectors.sink_warehouse.layout import topic_folder
from connectors.sink_warehouse.storage import Storage

FOLDER = "_schemas/"


class SchemaManifest:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._stored: dict[str, set[str]] = {}  # topic -> keys known to be in storage
        self._unstored: dict[str, tuple[str, bytes]] = {}  # key -> (topic, file) to write before data

    def new_schemas(self, topic: str) -> list[pa.Schema]:
        """The schemas stored for ``topic`` that this process has not read or written yet."""
        seen = self._stored.setdefault(topic, set())
        found = []
        for key in self.storage.list_keys(self._folder(topic)):
            if key.endswith(".arrow") and key not in seen:
                found.append(_read_schema(key, self.storage.read_object(key)))
                seen.add(key)
        return found

    def add(self, topic: str, schema: pa.Schema) -> None:
        """Record ``schema`` as used by ``topic``: :meth:`store` writes it unless it is stored."""
        body = _schema_file(schema)
        key = f"{self._folder(topic)}{hashlib.sha256(body).hexdigest()[:32]}.arrow"
        if key not in self._stored.setdefault(topic, set()):
            self._unstored[key] = (topic, body)

    def store(self, before_each: Callable[[str], None]) -> None:
        """Write the schemas added since the last store; call before writing data files.
        ``before_each(key)`` runs before each write (the flush deadline check)."""
        for key, (topic, body) in list(self._unstored.items()):
            before_each(key)
            with self.storage.open_object(key) as out:
                out.write(body)
            self._stored[topic].add(key)
            del self._unstored[key]

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
