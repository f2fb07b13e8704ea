"""The notification ledger: what each report event decided, and the outbox of messages to send.

Two writers share it. The consumer thread records a batch of contacts and report events,
the messages they call for and the consumed offsets in **one transaction** (so a redelivered
batch is a no-op, and the runtime resumes from the offsets stored here). The sender thread
claims due messages (an *intent*: state ``sending`` is committed before the provider is
called) and records each provider's answer. Every state change is a compare-and-set on the
message's state, so the two never overwrite each other's decisions.

What a report event decides (README: "What is and is not sent"):

* a replayed event, or one older than ``max_event_age_ms`` → nothing;
* final → one "results ready" message per report, shared by the patient's other reports
  within the combine window;
* a correction → one neutral "results updated" notice (nothing extra while the "ready"
  message has not gone out yet: it will point to the corrected report);
* cancelled / entered-in-error → removed from a message not sent yet, nothing to the patient;
* critical (final or corrected) → one alert to the on-call channel, at once, whatever the hour.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from common import RetriableError, SinkRecord, TopicPartition
from common.errors import scrub
from connectors.sink_notify import tables
from connectors.sink_notify.events import (
    CORRECTED_STATUSES, FINAL_STATUSES, RETRACTED_STATUSES, Contact, ReportEvent,
)
from connectors.sink_notify.pacing import WEEK_MS, Caps, QuietHours
from connectors.sink_notify.providers import Accepted, Rejected, RetryLater, SendResult

NAMESPACE = uuid.UUID("3d0b6a2e-8f4c-5e61-a7d2-5c9e1b4f7a20")  # fixed forever: message keys derive from it
UNSENT = ("pending", "deferred", "retrying")
CONTACT_RECHECK_MS = 30_000
_t = tables


@dataclass(frozen=True, slots=True)
class DeliveryRules:
    """The policy the ledger applies: which channel, when, how often (see NotifySettings)."""

    channels: tuple[str, ...] = ("sms", "email")
    combine_window_ms: int = 300_000
    max_event_age_ms: int = 7 * 86_400_000
    contact_wait_ms: int = 86_400_000
    quiet_hours: QuietHours = QuietHours.parse("21:00", "08:00")
    caps: dict[str, Caps] = field(default_factory=lambda: {"sms": Caps(1, 3), "email": Caps(3, 10)})
    oncall: dict[str, str] = field(default_factory=dict)  # channel -> on-call address for critical alerts
    retry_budget_ms: int = 6 * 3_600_000


@dataclass(frozen=True, slots=True)
class Claim:
    """A message the sender may send now (its intent is committed)."""

    id: int
    key: str
    audience: str
    kind: str
    channel: str
    to: str
    language: str
    report_count: int
    patient_id: str
    accessions: tuple[str, ...] = ()  # for templates that opt into them (the on-call alert)

    @property
    def reference(self) -> str:
        """A short reference for the patient and the lab (derived from the key, not PHI)."""
        text = self.key.replace("-", "").upper()
        return f"{text[:4]}-{text[4:8]}"


@contextmanager
def _classified(what: str) -> Iterator[None]:
    """Database failures are outages (retried by the runtime); their text is scrubbed."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise RetriableError(f"notify ledger: {what} failed: {scrub(str(exc))}") from exc


def _key(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


class Ledger:
    def __init__(self, engine: Engine, rules: DeliveryRules) -> None:
        self.engine = engine
        self.rules = rules

    # ------------------------------------------------------------------ consumer side
    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = set(partitions)
        if not wanted:
            return {}
        t = _t.kafka_offsets
        with _classified("reading stored offsets"), self.engine.connect() as conn:
            rows = conn.execute(select(t.c.topic, t.c.kafka_partition, t.c.next_offset)
                                .where(t.c.topic.in_(sorted({topic for topic, _ in wanted})))).all()
        return {(r.topic, r.kafka_partition): r.next_offset for r in rows if (r.topic, r.kafka_partition) in wanted}

    def record(self, contacts: Sequence[tuple[str, Contact | None]], events: Sequence[ReportEvent],
               offsets: dict[TopicPartition, int], now: int, dead_lettered: Iterable[int] = ()) -> dict[str, int]:
        """Apply a batch and store its offsets in one transaction; returns counts by outcome."""
        with _classified("recording a batch"), self.engine.begin() as conn:
            for patient_id, update_ in contacts:
                self._apply_contact(conn, patient_id, update_, now)
            outcomes = self._apply_events(conn, events, now)
            done = list(dead_lettered)
            if done:
                conn.execute(update(_t.messages).where(_t.messages.c.id.in_(done))
                             .values(dead_letter="done", updated_at=now))
                _forget_raw(conn, done)
            self._store_offsets(conn, offsets, now)
        return outcomes

    def _apply_contact(self, conn: Connection, patient_id: str, new: Contact | None, now: int) -> None:
        c = _t.contacts.c
        if new is None:  # a tombstone on the compacted topic: the patient's contact is gone
            conn.execute(delete(_t.contacts).where(c.patient_id == patient_id))
            return
        old = conn.execute(select(_t.contacts).where(c.patient_id == patient_id)).first()
        values = dict(phone=new.phone, email=new.email, sms_consent=new.sms_consent,
                      email_consent=new.email_consent, time_zone=new.time_zone, language=new.language,
                      contact_time=new.contact_time, updated_at=now)
        if old is None:
            conn.execute(insert(_t.contacts).values(patient_id=patient_id, **values))
        elif new.contact_time >= old.contact_time:  # an older record (a re-read) never wins
            for name in new.unknown & {"phone", "email"}:  # not carried by this update: unknown, not removed
                values[name] = getattr(old, name)
            # A provider's verdict holds for the address it was about; a new address starts clean.
            values["sms_blocked"] = old.sms_blocked if new.phone == old.phone else None
            values["email_blocked"] = old.email_blocked if new.email == old.email else None
            conn.execute(update(_t.contacts).where(c.patient_id == patient_id).values(**values))
        m = _t.messages.c
        conn.execute(update(_t.messages).where(and_(m.patient_id == patient_id, m.state == "deferred",
                                                    m.reason == "awaiting_contact")).values(due_at=now))

    def _apply_events(self, conn: Connection, events: Sequence[ReportEvent], now: int) -> dict[str, int]:
        outcomes: dict[str, int] = defaultdict(int)
        if not events:
            return outcomes
        e = _t.events.c
        known = {row.event_id for row in conn.execute(
            select(e.event_id).where(e.event_id.in_({ev.event_id for ev in events})))}
        rows: list[dict[str, Any]] = []
        for event in events:
            if event.event_id in known:
                outcomes["duplicate"] += 1
                continue
            known.add(event.event_id)
            decision = self._decide(conn, event, now)
            outcomes[decision["outcome"] if decision["reason"] is None else decision["reason"]] += 1
            keep_raw = decision["message_id"] is not None or decision["alert_message_id"] is not None
            record = event.record
            rows.append(dict(
                event_id=event.event_id, source_system=event.source_system, accession=event.accession,
                patient_id=event.patient_id, report_status=event.report_status, critical=event.critical,
                event_time=event.event_time, received_at=now, kafka_topic=record.topic,
                kafka_partition=record.partition, kafka_offset=record.offset,
                raw_key=record.raw_key if keep_raw else None, raw_value=record.raw_value if keep_raw else None,
                raw_headers=_headers_json(record.headers) if keep_raw else None, **decision))
        if rows:
            conn.execute(insert(_t.events), rows)
        return outcomes

    def _decide(self, conn: Connection, event: ReportEvent, now: int) -> dict[str, Any]:
        decision: dict[str, Any] = dict(outcome="suppressed", reason=None, message_id=None, alert_message_id=None)
        if event.replayed:
            return {**decision, "reason": "replay"}
        if now - event.event_time > self.rules.max_event_age_ms:
            return {**decision, "reason": "too_old"}
        r = _t.reports.c
        where = and_(r.source_system == event.source_system, r.accession == event.accession)
        report = conn.execute(select(_t.reports).where(where)).first()
        if report is None:
            conn.execute(insert(_t.reports).values(source_system=event.source_system, accession=event.accession,
                                                   patient_id=event.patient_id, last_status=event.report_status,
                                                   updated_at=now))
            ready_id, alerted = None, None
        else:
            conn.execute(update(_t.reports).where(where).values(last_status=event.report_status, updated_at=now))
            ready_id, alerted = report.ready_message_id, report.critical_alerted
        status = event.report_status
        if event.critical and (status in FINAL_STATUSES or status in CORRECTED_STATUSES):
            alert_class = "final" if status in FINAL_STATUSES else "corrected"
            if alerted != alert_class:
                decision["alert_message_id"] = self._new_message(
                    conn, "critical_alert", "clinician", event, now, now, _key("alert", event.source_system,
                                                                               event.accession, alert_class))
                conn.execute(update(_t.reports).where(where).values(critical_alerted=alert_class))
        if status in RETRACTED_STATUSES:
            if ready_id is not None:
                self._retract(conn, ready_id, event, now)
            return {**decision, "reason": "retracted"}
        if status in FINAL_STATUSES or (status in CORRECTED_STATUSES and ready_id is None):
            if ready_id is not None:
                return {**decision, "reason": "already_notified"}
            message_id = self._attach(conn, "results_ready", event, now, _key("ready", event.source_system,
                                                                              event.accession))
            conn.execute(update(_t.reports).where(where).values(ready_message_id=message_id))
            return {**decision, "outcome": "queued", "message_id": message_id}
        if status in CORRECTED_STATUSES:
            ready = conn.execute(select(_t.messages.c.state).where(_t.messages.c.id == ready_id)).scalar()
            if ready in UNSENT:
                return {**decision, "reason": "ready_pending"}
            message_id = self._attach(conn, "results_updated", event, now, _key("updated", event.event_id))
            return {**decision, "outcome": "queued", "message_id": message_id}
        return {**decision, "reason": "not_final"}

    def _attach(self, conn: Connection, kind: str, event: ReportEvent, now: int, key: str) -> int:
        """Add the report to the patient's message of this kind still in its combine window, or open one."""
        m = _t.messages.c
        open_ = conn.execute(select(m.id, m.accessions).where(and_(
            m.patient_id == event.patient_id, m.kind == kind, m.audience == "patient", m.state == "pending",
            m.due_at > now)).order_by(m.id.desc()).limit(1)).first()
        if open_ is not None:
            accessions = [*json.loads(open_.accessions), [event.source_system, event.accession]]
            changed = conn.execute(update(_t.messages).where(and_(m.id == open_.id, m.state == "pending"))
                                   .values(accessions=json.dumps(accessions), report_count=len(accessions),
                                           updated_at=now)).rowcount
            if changed:
                return int(open_.id)
        return self._new_message(conn, kind, "patient", event, now, now + self.rules.combine_window_ms, key)

    def _new_message(self, conn: Connection, kind: str, audience: str, event: ReportEvent, now: int, due: int,
                     key: str) -> int:
        existing = conn.execute(select(_t.messages.c.id).where(_t.messages.c.message_key == key)).scalar()
        if existing is not None:  # the same report's message already exists (a re-keyed replay): reuse it
            return int(existing)
        result = conn.execute(insert(_t.messages).values(
            message_key=key, audience=audience, kind=kind, patient_id=event.patient_id, report_count=1,
            accessions=json.dumps([[event.source_system, event.accession]]), state="pending", due_at=due,
            created_at=now, updated_at=now, attempts=0))
        return int(result.inserted_primary_key[0])

    def _retract(self, conn: Connection, message_id: int, event: ReportEvent, now: int) -> None:
        m = _t.messages.c
        row = conn.execute(select(m.state, m.accessions).where(m.id == message_id)).first()
        if row is None or row.state not in UNSENT:
            return  # already out (or going): a retraction sends the patient nothing
        left = [a for a in json.loads(row.accessions) if a != [event.source_system, event.accession]]
        values: dict[str, Any] = dict(accessions=json.dumps(left), report_count=len(left), updated_at=now)
        if not left:
            values.update(state="suppressed", reason="retracted")
        conn.execute(update(_t.messages).where(and_(m.id == message_id, m.state == row.state)).values(**values))

    def _store_offsets(self, conn: Connection, offsets: dict[TopicPartition, int], now: int) -> None:
        o = _t.kafka_offsets.c
        for (topic, partition), offset in offsets.items():
            where = and_(o.topic == topic, o.kafka_partition == partition)
            if not conn.execute(update(_t.kafka_offsets).where(where).values(next_offset=offset,
                                                                           updated_at=now)).rowcount:
                conn.execute(insert(_t.kafka_offsets).values(topic=topic, kafka_partition=partition,
                                                             next_offset=offset, updated_at=now))

    def backlog(self, now: int) -> int:
        """Messages due and not sent yet (intake pauses above NOTIFY_MAX_BACKLOG)."""
        m = _t.messages.c
        with _classified("counting the backlog"), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(and_(m.state.in_(("pending", "retrying")),
                                                                    m.due_at <= now))).scalar() or 0)

    def dead_letters(self, limit: int = 100) -> list[tuple[int, str, list[SinkRecord]]]:
        """Failed messages whose report events still have to go to the dead-letter queue."""
        m, e = _t.messages.c, _t.events.c
        out = []
        with _classified("reading dead letters"), self.engine.connect() as conn:
            failed = conn.execute(select(m.id, m.error_code, m.reason).where(m.dead_letter == "pending")
                                  .order_by(m.id).limit(limit)).all()
            for row in failed:
                events = conn.execute(select(_t.events).where(
                    (e.message_id == row.id) | (e.alert_message_id == row.id)).order_by(e.kafka_offset)).all()
                records = [SinkRecord(ev.kafka_topic, ev.kafka_partition, ev.kafka_offset, ev.event_time,
                                      ev.raw_key.decode() if ev.raw_key else None, None, ev.raw_key, ev.raw_value,
                                      _headers(ev.raw_headers)) for ev in events if ev.raw_value is not None]
                out.append((int(row.id), f"{row.reason} ({row.error_code})", records))
        return out

    # -------------------------------------------------------------------- sender side
    def recover_interrupted(self, resend: bool, now: int) -> int:
        """Messages left in ``sending`` by a crash: the provider may or may not have them."""
        m = _t.messages.c
        values = dict(state="retrying", due_at=now) if resend else dict(state="unconfirmed")
        with _classified("recovering interrupted sends"), self.engine.begin() as conn:
            return int(conn.execute(update(_t.messages).where(m.state == "sending")
                                    .values(reason="interrupted", updated_at=now, **values)).rowcount)

    def claim(self, now: int, limit: int, busy_patients: set[str]) -> list[Claim]:
        """Decide the due messages (defer, suppress or claim) and return those to send now,
        at most one per patient and in each patient's order."""
        m, c = _t.messages.c, _t.contacts.c
        claims: list[Claim] = []
        with _classified("claiming due messages"), self.engine.begin() as conn:
            due = conn.execute(select(_t.messages).where(and_(m.state.in_(UNSENT), m.due_at <= now))
                               .order_by(m.id).limit(limit * 4)).all()
            if not due:
                return []
            patients = {row.patient_id for row in due if row.audience == "patient"}
            first_open = dict(conn.execute(select(m.patient_id, func.min(m.id)).where(and_(
                m.patient_id.in_(patients), m.audience == "patient", m.state.in_(tables.OPEN_STATES)))
                .group_by(m.patient_id)).all()) if patients else {}
            blocked_until = dict(conn.execute(select(m.id, m.due_at).where(
                m.id.in_(set(first_open.values())))).all()) if first_open else {}
            contacts = {row.patient_id: row for row in conn.execute(
                select(_t.contacts).where(c.patient_id.in_(patients)))} if patients else {}
            history: dict[tuple[str, str], list[int]] = defaultdict(list)
            if patients:
                for row in conn.execute(select(m.patient_id, m.channel, m.sent_at, m.updated_at).where(and_(
                        m.patient_id.in_(patients), m.audience == "patient",
                        m.state.in_(("sent", "sending", "unconfirmed")), m.updated_at > now - WEEK_MS))):
                    history[(row.patient_id, row.channel)].append(row.sent_at or row.updated_at)
            for row in due:
                if len(claims) >= limit:
                    break
                if row.audience == "clinician":
                    channel = next((ch for ch in ("sms", "email") if self.rules.oncall.get(ch)), None)
                    if channel is None:
                        self._set(conn, row, now, state="suppressed", reason="no_oncall_channel")
                        continue
                    if self._set(conn, row, now, state="sending", channel=channel, attempts=row.attempts + 1,
                                 first_attempt_at=row.first_attempt_at or now):
                        claims.append(Claim(row.id, row.message_key, row.audience, row.kind, channel,
                                            self.rules.oncall[channel], "en", row.report_count, row.patient_id,
                                            tuple(a for _, a in json.loads(row.accessions))))
                    continue
                patient = row.patient_id
                if patient in busy_patients:
                    continue  # one message per patient at a time
                if first_open.get(patient) != row.id:  # behind an earlier message (deferred, say): keep the
                    # order, and wait as long as it does, so that blocked rows never crowd out others' turns
                    blocker_due = blocked_until.get(first_open.get(patient), now)
                    self._set(conn, row, now, state="deferred", reason="behind_earlier",
                              due_at=max(blocker_due, now + 1000))
                    continue
                contact = contacts.get(patient)
                if contact is None:
                    expires = row.created_at + self.rules.contact_wait_ms
                    if now >= expires:
                        self._set(conn, row, now, state="suppressed", reason="no_contact")
                    else:
                        # Looked at again soon, not only when the contact arrives: a contact committed
                        # between this read and this write would otherwise not wake the message.
                        self._set(conn, row, now, state="deferred", reason="awaiting_contact",
                                  due_at=min(expires, now + CONTACT_RECHECK_MS))
                    continue
                channel, refusal = self._channel(contact)
                if channel is None:
                    self._set(conn, row, now, state="suppressed", reason=refusal)
                    continue
                allowed = self.rules.quiet_hours.next_allowed(now, contact.time_zone)
                if allowed > now:
                    self._set(conn, row, now, state="deferred", reason="quiet_hours", due_at=allowed)
                    continue
                allowed = self.rules.caps[channel].next_allowed(now, history[(patient, channel)])
                if allowed > now:
                    self._set(conn, row, now, state="deferred", reason="rate_cap", due_at=allowed)
                    continue
                if self._set(conn, row, now, state="sending", channel=channel, attempts=row.attempts + 1,
                             first_attempt_at=row.first_attempt_at or now):
                    busy_patients.add(patient)
                    history[(patient, channel)].append(now)
                    to = contact.phone if channel == "sms" else contact.email
                    claims.append(Claim(row.id, row.message_key, row.audience, row.kind, channel, to,
                                        contact.language, row.report_count, patient))
        return claims

    def _channel(self, contact: Any) -> tuple[str | None, str]:
        """The first preferred channel the patient consented to and can be reached on, or why none."""
        refusal = "no_consent"
        for channel in self.rules.channels:
            address = contact.phone if channel == "sms" else contact.email
            consent = contact.sms_consent if channel == "sms" else contact.email_consent
            blocked = contact.sms_blocked if channel == "sms" else contact.email_blocked
            if not consent:
                continue
            if blocked:
                refusal = blocked if refusal == "no_consent" else refusal
                continue
            if not address:
                refusal = "no_address" if refusal == "no_consent" else refusal
                continue
            return channel, ""
        return None, refusal

    @staticmethod
    def _set(conn: Connection, row: Any, now: int, **values: Any) -> bool:
        """Compare-and-set: change the message only if nobody changed its state meanwhile."""
        m = _t.messages.c
        changed = bool(conn.execute(update(_t.messages).where(and_(m.id == row.id, m.state == row.state))
                                    .values(updated_at=now, **values)).rowcount)
        if changed and values.get("state") == "suppressed":
            _forget_raw(conn, [row.id])
        return changed

    def finish(self, results: Sequence[tuple[Claim, SendResult]], now: int) -> None:
        """Record the providers' answers: sent, retry later, or failed (and what it says about the contact)."""
        if not results:
            return
        m, c = _t.messages.c, _t.contacts.c
        with _classified("recording sends"), self.engine.begin() as conn:
            for claim, result in results:
                where = and_(m.id == claim.id, m.state == "sending")
                if isinstance(result, Accepted):
                    if conn.execute(update(_t.messages).where(where).values(
                            state="sent", reason=None, sent_at=now, updated_at=now,
                            provider_message_id=result.provider_message_id[:128])).rowcount:
                        _forget_raw(conn, [claim.id])
                elif isinstance(result, RetryLater):
                    first = conn.execute(select(m.first_attempt_at, m.attempts).where(m.id == claim.id)).first()
                    if first is not None and now - (first.first_attempt_at or now) >= self.rules.retry_budget_ms:
                        conn.execute(update(_t.messages).where(where).values(
                            state="failed", reason="provider_unavailable", error_code=result.reason[:32],
                            dead_letter="pending", updated_at=now))
                        continue
                    attempts = first.attempts if first is not None else 1
                    delay = result.retry_after if result.retry_after is not None else \
                        min(600.0, 2.0 ** min(attempts, 10)) * random.uniform(0.5, 1.0)
                    conn.execute(update(_t.messages).where(where).values(
                        state="retrying", reason="provider_retry", error_code=result.reason[:32],
                        due_at=now + int(delay * 1000), updated_at=now))
                elif isinstance(result, Rejected):
                    conn.execute(update(_t.messages).where(where).values(
                        state="failed", reason=result.contact_flag or "rejected", error_code=result.code[:32],
                        dead_letter="pending", updated_at=now))
                    if result.contact_flag and claim.audience == "patient":
                        column = "sms_blocked" if claim.channel == "sms" else "email_blocked"
                        conn.execute(update(_t.contacts).where(c.patient_id == claim.patient_id)
                                     .values({column: result.contact_flag, "updated_at": now}))

    # ----------------------------------------------------------------------- reporting
    def outcomes(self, since: int) -> dict[str, list[tuple[Any, ...]]]:
        """Counts for `labconnect notify report`: messages by state, reason and channel, and the
        report events that sent nothing, by reason."""
        m, e = _t.messages.c, _t.events.c
        with _classified("reading the report"), self.engine.connect() as conn:
            messages = conn.execute(select(m.audience, m.state, m.reason, m.channel, func.count())
                                    .where(m.created_at >= since)
                                    .group_by(m.audience, m.state, m.reason, m.channel)).all()
            events = conn.execute(select(e.outcome, e.reason, func.count()).where(e.received_at >= since)
                                  .group_by(e.outcome, e.reason)).all()
        return {"messages": [tuple(r) for r in messages], "events": [tuple(r) for r in events]}


def _forget_raw(conn: Connection, message_ids: list[int]) -> None:
    """The raw records of a message's events were kept for the dead-letter queue only: once the
    message is sent, suppressed or dead-lettered, the ledger keeps no result data."""
    for column in (_t.events.c.message_id, _t.events.c.alert_message_id):
        conn.execute(update(_t.events).where(and_(column.in_(message_ids), _t.events.c.raw_value.is_not(None)))
                     .values(raw_key=None, raw_value=None, raw_headers=None))


def _headers_json(headers: list[tuple[str, bytes]]) -> str:
    return json.dumps([[k, base64.b64encode(v or b"").decode()] for k, v in headers])


def _headers(text: str | None) -> list[tuple[str, bytes]]:
    return [(k, base64.b64decode(v)) for k, v in json.loads(text)] if text else []
