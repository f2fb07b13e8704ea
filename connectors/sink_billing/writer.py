"""ChargeWriter: one flush = one database transaction with the billing rows and the offsets.

Read the stored charge states of the batch's bill keys, fold the batch through
the rules, write the changed charges, insert ledger and unpriced rows (event id
and bill key are their primary key, so a re-delivered event is a no-op even
without the offsets table) and upsert the consumed offsets -- then commit. A crash
anywhere before the commit leaves nothing; the runtime seeks back to the stored
offsets.

Two tasks can hold events of one bill key at once (on two partitions), so charge
rows are written compare-and-set: inserted only while still absent, updated only
while their ``event_id`` is the one this flush read. Fewer rows written than sent
means another task committed the key after our read: a RetriableError, whose retry
re-reads and re-decides. The ledger's one-charge and one-reversal indexes stand
behind that; a violation of one is retriable only when a re-read shows that another
task changed the bill key meanwhile -- otherwise the ledger already holds an entry
that billing_charges does not show, retrying cannot help, and the record is
dead-lettered (PermanentError).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from common import ConnectorError, PermanentError, RetriableError, TopicPartition
from common.errors import scrub
from connectors.sink_billing import tables, violations
from connectors.sink_billing.bulk import BulkUpsert, MultiRowUpsert, Rows, dialect_insert
from connectors.sink_billing.events import BillingEvent, BillKey
from connectors.sink_billing.rules import BatchOutcome, ChargeRules, ChargeState, LedgerEntry, fold_batch

_LOOKUP_CHUNK = 1000
# The compare-and-set token of a charge row: the event that last changed it.
_GUARD = "event_id"


class ChargeWriter:
    """Writes batches of BillingEvents and the consumed offsets, exactly once."""

    def __init__(self, engine: Engine, rules: ChargeRules, upsert: BulkUpsert | None = None) -> None:
        self.engine = engine
        self.rules = rules
        self.upsert = upsert or MultiRowUpsert()

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offsets stored for ``partitions`` (only those with a row)."""
        wanted = set(partitions)
        if not wanted:
            return {}
        t = tables.kafka_offsets
        query = select(t.c.topic, t.c.kafka_partition, t.c.next_offset).where(
            t.c.topic.in_(sorted({topic for topic, _ in wanted})))
        with _classified("reading stored offsets"), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {(r.topic, r.kafka_partition): r.next_offset for r in rows if (r.topic, r.kafka_partition) in wanted}

    def write(self, events: Sequence[BillingEvent], offsets: dict[TopicPartition, int]) -> BatchOutcome:
        """Apply ``events`` and store ``offsets`` in one transaction; returns what was written."""
        what = _Writing(events)
        read: dict[BillKey, ChargeState] = {}
        with _classified(what):
            try:
                with self.engine.begin() as conn:
                    read.update(self._load_states(conn, {e.key for e in events}))
                    outcome = fold_batch(self.rules, read, list(events))
                    self._store(conn, what, read, outcome, offsets)
                return outcome
            except Exception as error:
                self._check_index_violation(error, what, {e.key for e in events}, read)
                raise

    def read_states(self, keys: set[BillKey]) -> dict[BillKey, ChargeState]:
        """The stored charge states of ``keys`` (absent keys have none), in a transaction of their own."""
        with _classified("reading charge states"), self.engine.connect() as conn:
            return self._load_states(conn, keys)

    def commit(self, events: Sequence[BillingEvent], read: dict[BillKey, ChargeState], outcome: BatchOutcome,
               offsets: dict[TopicPartition, int]) -> None:
        """Store ``outcome`` -- ``events`` folded on ``read``, the states of their bill keys as this
        task last saw them -- and ``offsets`` in one transaction, compare-and-set against ``read``."""
        what = _Writing(events)
        with _classified(what):
            try:
                with self.engine.begin() as conn:
                    self._store(conn, what, read, outcome, offsets)
            except Exception as error:
                self._check_index_violation(error, what, {e.key for e in events}, read)
                raise

    def _check_index_violation(self, error: Exception, what: _Writing, keys: set[BillKey],
                               read: dict[BillKey, ChargeState]) -> None:
        index = violations.unique_index(error)
        if index is not None:
            raise self._after_index_violation(what, index, keys, read) from error

    def _store(self, conn: Connection, what: _Writing, read: dict[BillKey, ChargeState], outcome: BatchOutcome,
               offsets: dict[TopicPartition, int]) -> None:
        now = datetime.now(timezone.utc)
        if self._write_charges(conn, read, list(outcome.charges.values()), now) < len(outcome.charges):
            raise RetriableError(f"{what}: a bill key was changed concurrently by another task after this "
                                 "flush read it (compare-and-set on billing_charges); the retry re-reads it")
        # No bill key of the batch stored yet: none of its ledger or unpriced rows can be either
        # (bar a replay of unpriced events, which the fallback merge absorbs).
        insert = self.upsert.insert_fresh if not read else self.upsert
        insert(conn, tables.ledger, Rows(LEDGER_COLUMNS, [_ledger_row(e, now) for e in outcome.ledger]),
               keys=tables.EVENT_PER_BILL_KEY)
        insert(conn, tables.unpriced_events,
               Rows(UNPRICED_COLUMNS, [_unpriced_row(u.event, u.reason, now) for u in outcome.unpriced]),
               keys=tables.EVENT_PER_BILL_KEY)
        _store_offsets(conn, offsets, now)

    def _write_charges(self, conn: Connection, read: dict[BillKey, ChargeState], states: list[ChargeState],
                       now: datetime) -> int:
        """Compare-and-set against ``read``; returns how many of ``states`` were written."""
        new = Rows(CHARGE_COLUMNS, [_charge_row(s, now) for s in states if s.key not in read])
        moved = [s for s in states if s.key in read]
        written = self.upsert.insert_fresh(conn, tables.charges, new, keys=tables.BILL_KEY)
        return written + self.upsert.compare_and_set(
            conn, tables.charges, Rows(CHARGE_COLUMNS, [_charge_row(s, now) for s in moved]), keys=tables.BILL_KEY,
            guard=_GUARD,
            expected=[read[s.key].stored_event_id for s in moved])

    def _after_index_violation(self, what: _Writing, index: str, keys: set[BillKey],
                               read: dict[BillKey, ChargeState]) -> ConnectorError:
        """Retriable only if another task changed one of ``keys`` since ``read``: otherwise the same
        batch fails the same way forever, and only the poison record's bill key needs a person."""
        with self.engine.connect() as conn:
            now = self._load_states(conn, keys)
        if _tokens(now) != _tokens(read):
            return RetriableError(f"{what}: a bill key was changed concurrently by another task ({index}); "
                                  "the retry re-reads it")
        return PermanentError(
            f"{what}: {index} rejects a ledger row although no other task changed its bill key: billing_ledger "
            "already holds an entry that billing_charges does not show; reconcile the two for the record's "
            "bill key, then re-drive the record from the dead-letter queue")

    def _load_states(self, conn: Connection, keys: set[BillKey]) -> dict[BillKey, ChargeState]:
        if not keys:
            return {}
        t = tables.charges
        accessions = sorted({k.accession for k in keys})
        columns = (t.c.accession, t.c.test_code, t.c.source_system, t.c.status, t.c.amount, t.c.currency,
                   t.c.price_effective_from, t.c.service_time, t.c.charge_event_id, t.c.latest_version,
                   t.c.latest_event_time, t.c.event_id)
        # By accession (the primary key's first column), then exact keys here: one parameter per accession
        # (PostgreSQL: a single array parameter), not three per key.
        if conn.dialect.name == "postgresql":
            queries = [select(*columns).where(t.c.accession == any_(
                bindparam("accessions", accessions, type_=postgresql.ARRAY(String()))))]
        else:
            queries = [select(*columns).where(t.c.accession.in_(accessions[start:start + _LOOKUP_CHUNK]))
                       for start in range(0, len(accessions), _LOOKUP_CHUNK)]
        states: dict[BillKey, ChargeState] = {}
        for query in queries:
            for row in conn.execute(query):
                key = BillKey(row.source_system, row.accession, row.test_code)
                if key in keys:
                    states[key] = ChargeState(key, row.status, row.amount, row.currency, row.price_effective_from,
                                              row.service_time, row.charge_event_id, row.latest_version,
                                              _utc(row.latest_event_time), stored_event_id=row.event_id)
        return states


def _store_offsets(conn: Connection, offsets: dict[TopicPartition, int], now: datetime) -> None:
    if not offsets:
        return
    t = tables.kafka_offsets
    rows = [{"topic": topic, "kafka_partition": partition, "next_offset": offset, "updated_at": now}
            for (topic, partition), offset in sorted(offsets.items())]
    stmt = dialect_insert(conn, t).values(rows)
    # Only a moved offset touches the row: a replayed flush leaves the database unchanged.
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["topic", "kafka_partition"],
        set_={"next_offset": stmt.excluded.next_offset, "updated_at": stmt.excluded.updated_at},
        where=t.c.next_offset != stmt.excluded.next_offset,
    ))


def _tokens(states: dict[BillKey, ChargeState]) -> dict[BillKey, str | None]:
    return {key: state.stored_event_id for key, state in states.items()}


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive times (stored as UTC): comparable with the events' aware ones."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


# The rows as tuples in these column orders: they are built for every event of every batch.
CHARGE_COLUMNS = ("accession", "test_code", "source_system", "status", "amount", "currency", "price_effective_from",
                  "service_time", "charge_event_id", "latest_version", "latest_report_status", "event_id",
                  "source_message_id", "kafka_topic", "kafka_partition", "kafka_offset", "processed_at",
                  "latest_event_time")
LEDGER_COLUMNS = ("event_id", "source_message_id", "kafka_topic", "kafka_partition", "kafka_offset", "processed_at",
                  "accession", "test_code", "source_system", "entry_type", "amount", "currency", "report_status",
                  "version", "service_time", "charge_event_id")
UNPRICED_COLUMNS = ("event_id", "source_message_id", "kafka_topic", "kafka_partition", "kafka_offset",
                    "processed_at", "accession", "test_code", "source_system", "reason", "report_status", "version",
                    "service_time")


def _charge_row(state: ChargeState, now: datetime) -> tuple[Any, ...]:
    latest = state.latest_event
    assert latest is not None  # only states changed by an event are written
    key = state.key
    return (key.accession, key.test_code, key.source_system, state.status, state.amount, state.currency,
            state.price_effective_from, state.service_time, state.charge_event_id, state.latest_version,
            latest.report_status, latest.event_id, latest.source_message_id, latest.topic, latest.partition,
            latest.offset, now, state.latest_event_time)


def _ledger_row(entry: LedgerEntry, now: datetime) -> tuple[Any, ...]:
    event = entry.event
    key = event.key
    return (event.event_id, event.source_message_id, event.topic, event.partition, event.offset, now,
            key.accession, key.test_code, key.source_system, entry.entry_type, entry.amount, entry.currency,
            event.report_status, event.version, event.event_time, entry.charge_event_id)


def _unpriced_row(event: BillingEvent, reason: str, now: datetime) -> tuple[Any, ...]:
    key = event.key
    return (event.event_id, event.source_message_id, event.topic, event.partition, event.offset, now,
            key.accession, key.test_code, key.source_system, reason, event.report_status, event.version,
            event.event_time)


def _describe(events: Sequence[BillingEvent]) -> str:
    """Identifiers only: which Kafka positions a batch covers."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for e in events:
        low, high = spans.get((e.topic, e.partition), (e.offset, e.offset))
        spans[(e.topic, e.partition)] = (min(low, e.offset), max(high, e.offset))
    parts = [f"{t}/{p}@{lo}..{hi}" for (t, p), (lo, hi) in sorted(spans.items())]
    return f"{len(events)} billing events ({', '.join(parts) or 'offsets only'})"


class _Writing:
    """``writing N billing events (topic/partition@first..last)``, built only when a message needs it."""

    def __init__(self, events: Sequence[BillingEvent]) -> None:
        self.events = events

    def __str__(self) -> str:
        return f"writing {_describe(self.events)}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class _classified:
    """Turn database failures into the runtime's two kinds: the record's fault or not."""

    def __init__(self, what: _Writing | str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: Any) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, (PermanentError, RetriableError)):
            return False
        if violations.is_constraint_violation(error):
            raise PermanentError(f"{self.what}: a row violates {violations.describe(error)}") from error
        if isinstance(error, SQLAlchemyError) or violations.is_dbapi_error(error):
            # Not the record's fault (unreachable, locked, restarted, schema dropped): retry, then fail the task.
            raise RetriableError(f"{self.what}: billing database error {violations.error_class(error)}: "
                                 f"{scrub(str(getattr(error, 'orig', None) or error))}") from error
        return False
