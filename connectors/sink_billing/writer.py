"""ChargeWriter: one flush = one database transaction with the billing rows and the offsets.

Read the stored charge states of the batch's bill keys, fold the batch through
the rules, upsert the changed charges, insert ledger and unpriced rows (event id
and bill key are their primary key, so a re-delivered event is a no-op even
without the offsets table) and upsert the consumed offsets -- then commit. A crash
anywhere before the commit leaves nothing; the runtime seeks back to the stored
offsets. Two tasks that charge one bill key at once (its events on two partitions)
collide on the ledger's one-charge index: the later one is retried, re-reading
the charge the other committed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from common.errors import PermanentError, RetriableError, scrub
from common.task import TopicPartition
from connectors.sink_billing import tables
from connectors.sink_billing.bulk import BulkUpsert, MultiRowUpsert, dialect_insert
from connectors.sink_billing.events import BillingEvent, BillKey
from connectors.sink_billing.rules import BatchOutcome, ChargeRules, ChargeState, fold_batch

_LOOKUP_CHUNK = 1000
_SQLITE_CONSTRAINT = re.compile(r"(CHECK|UNIQUE|NOT NULL|FOREIGN KEY) constraint failed(: [\w.]+)?")
# Every column but the key: a cancelled row that is charged later gets its price too.
_CHARGE_UPDATES = tuple(c.name for c in tables.charges.columns if not c.primary_key)
# SQLite names a unique index by its columns (PostgreSQL by name, see _constraint_name).
_SQLITE_ONE_CHARGE = "UNIQUE constraint failed: " + ", ".join(f"billing_ledger.{c}" for c in tables.BILL_KEY)


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
        where = _describe(events)
        with _classified(f"writing {where}"), self.engine.begin() as conn:
            current = self._load_states(conn, {e.key for e in events})
            outcome = fold_batch(self.rules, current, list(events))
            now = datetime.now(timezone.utc)
            self.upsert(conn, tables.charges, [_charge_row(s, now) for s in outcome.charges.values()],
                        keys=tables.BILL_KEY, update=_CHARGE_UPDATES)
            self.upsert(conn, tables.ledger, [_ledger_row(e.event, e.entry_type, e.amount, e.currency, now)
                                              for e in outcome.ledger], keys=tables.EVENT_PER_BILL_KEY)
            self.upsert(conn, tables.unpriced_events, [_unpriced_row(u.event, u.reason, now)
                                                       for u in outcome.unpriced], keys=tables.EVENT_PER_BILL_KEY)
            _store_offsets(conn, offsets, now)
        return outcome

    def _load_states(self, conn: Connection, keys: set[BillKey]) -> dict[BillKey, ChargeState]:
        if not keys:
            return {}
        t = tables.charges
        accessions = sorted({k.accession for k in keys})
        columns = (t.c.accession, t.c.test_code, t.c.source_system, t.c.status, t.c.amount, t.c.currency,
                   t.c.price_effective_from, t.c.service_time, t.c.charge_event_id, t.c.latest_version,
                   t.c.latest_event_time)
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
                                              _utc(row.latest_event_time))
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


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive times (stored as UTC): comparable with the events' aware ones."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _audit(event: BillingEvent, now: datetime) -> dict[str, Any]:
    return {"event_id": event.event_id, "source_message_id": event.source_message_id,
            "kafka_topic": event.topic, "kafka_partition": event.partition, "kafka_offset": event.offset,
            "processed_at": now}


def _key(key: BillKey) -> dict[str, Any]:
    return {"accession": key.accession, "test_code": key.test_code, "source_system": key.source_system}


def _charge_row(state: ChargeState, now: datetime) -> dict[str, Any]:
    latest = state.latest_event
    assert latest is not None  # only states changed by an event are written
    return {**_key(state.key), "status": state.status, "amount": state.amount, "currency": state.currency,
            "price_effective_from": state.price_effective_from, "service_time": state.service_time,
            "charge_event_id": state.charge_event_id, "latest_version": state.latest_version,
            "latest_report_status": latest.report_status, **_audit(latest, now),
            "latest_event_time": state.latest_event_time}


def _ledger_row(event: BillingEvent, entry_type: str, amount: Any, currency: str, now: datetime) -> dict[str, Any]:
    return {**_audit(event, now), **_key(event.key), "entry_type": entry_type, "amount": amount,
            "currency": currency, "report_status": event.report_status, "version": event.version,
            "service_time": event.event_time}


def _unpriced_row(event: BillingEvent, reason: str, now: datetime) -> dict[str, Any]:
    return {**_audit(event, now), **_key(event.key), "reason": reason, "report_status": event.report_status,
            "version": event.version, "service_time": event.event_time}


def _describe(events: Sequence[BillingEvent]) -> str:
    """Identifiers only: which Kafka positions a batch covers."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for e in events:
        low, high = spans.get((e.topic, e.partition), (e.offset, e.offset))
        spans[(e.topic, e.partition)] = (min(low, e.offset), max(high, e.offset))
    parts = [f"{t}/{p}@{lo}..{hi}" for (t, p), (lo, hi) in sorted(spans.items())]
    return f"{len(events)} billing events ({', '.join(parts) or 'offsets only'})"


class _classified:
    """Turn database failures into the runtime's two kinds: the record's fault or not."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: Any) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, (PermanentError, RetriableError)):
            return False
        if _is_concurrent_charge(error):
            # Not the record's fault: the retry re-reads the other task's charge and folds on top of it.
            raise RetriableError(f"{self.what}: a bill key was charged concurrently by another task "
                                 f"({tables.ONE_CHARGE_INDEX})") from error
        if _is_constraint_violation(error):
            raise PermanentError(f"{self.what}: a row violates {_constraint_name(error)}") from error
        if isinstance(error, SQLAlchemyError) or _is_dbapi_error(error):
            # Not the record's fault (unreachable, locked, restarted, schema dropped): retry, then fail the task.
            raise RetriableError(f"{self.what}: billing database error {_error_class(error)}: "
                                 f"{scrub(str(getattr(error, 'orig', None) or error))}") from error
        return False


def _dbapi(error: BaseException) -> BaseException:
    return error.orig if isinstance(error, DBAPIError) and error.orig is not None else error


def _is_dbapi_error(error: BaseException) -> bool:
    return any(c.__module__.startswith(("psycopg", "sqlite3")) for c in type(error).__mro__)


def _is_constraint_violation(error: BaseException) -> bool:
    names = {c.__name__ for c in type(_dbapi(error)).__mro__}
    return bool(names & {"IntegrityError", "DataError"})


def _is_concurrent_charge(error: BaseException) -> bool:
    """A violation of the one-charge-per-bill-key index, and of no other rule."""
    orig = _dbapi(error)
    diag = getattr(orig, "diag", None)
    if diag is not None:
        return getattr(diag, "constraint_name", None) == tables.ONE_CHARGE_INDEX
    return _is_constraint_violation(error) and str(orig).strip() == _SQLITE_ONE_CHARGE


def _error_class(error: BaseException) -> str:
    return type(_dbapi(error)).__name__


def _constraint_name(error: BaseException) -> str:
    orig = _dbapi(error)
    diag = getattr(orig, "diag", None)  # psycopg: names the constraint without echoing values
    if diag is not None and getattr(diag, "constraint_name", None):
        return f"constraint {diag.constraint_name}"
    if diag is not None and getattr(diag, "sqlstate", None):
        return f"a column rule (SQLSTATE {diag.sqlstate}, {type(orig).__name__})"
    match = _SQLITE_CONSTRAINT.search(str(orig))
    if match:
        return f"{match.group(1)} constraint{match.group(2) or ''}".replace(": ", " ")
    return f"a database constraint ({type(orig).__name__})"
