"""NotifySinkTask: LabReport events and patient contacts into the ledger; the sender does the rest.

``put`` parses and buffers; ``flush`` records the buffer, the messages it calls for and the
offsets in one ledger transaction, then wakes the sender. ``open`` returns the offsets
stored there, so a crash resumes exactly after the last recorded batch and a redelivered
event is a no-op. Messages a provider refused permanently go to the dead-letter queue
with the report events that asked for them (reported in ``put``, marked in ``flush``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from common import (
    ConfigError, PermanentError, RetriableError, SinkRecord, SinkTask, SinkTaskContext, TopicPartition,
)
from connectors.sink_notify.events import Contact, ReportEvent, contact, report_event
from connectors.sink_notify.ledger import DeliveryRules, Ledger
from connectors.sink_notify.limiter import TokenBucket
from connectors.sink_notify.pacing import Caps, QuietHours
from connectors.sink_notify.providers import FileOutbox, Provider, SendGridEmail, TwilioSms
from connectors.sink_notify.schema import ledger_engine, migrate_or_retry, require_current_schema
from connectors.sink_notify.sender import Sender, now_ms
from connectors.sink_notify.settings import NotifySettings
from connectors.sink_notify.templates import TemplateError, Templates

log = logging.getLogger(__name__)

PROVIDER_OUTAGE_S = 30.0  # every answer "retry later" for this long: shown in status, intake paused


class NotifySinkTask(SinkTask):
    def __init__(self, settings: NotifySettings, engine: Engine | None = None) -> None:
        """``engine`` replaces the one built from NOTIFY_DATABASE_URL (tests)."""
        self.settings = settings
        self._engine = engine
        self._ledger: Ledger | None = None
        self._sender: Sender | None = None
        self._contacts: list[tuple[str, Contact | None]] = []
        self._events: list[ReportEvent] = []
        self._dead_lettered: list[int] = []

    def start(self, context: SinkTaskContext) -> None:
        super().start(context)
        s = self.settings
        try:
            templates = Templates(lab_name=s.notify_lab_name, portal_url=s.notify_portal_url,
                                  directory=s.notify_template_dir)
        except TemplateError as exc:  # an operator's template that cannot work: exit 2, no restart loop
            raise ConfigError([f"NOTIFY_TEMPLATE_DIR: {exc}"]) from None
        engine = self._engine or ledger_engine(s.notify_database_url)
        self._engine = engine
        if s.notify_migrate_on_start:
            migrate_or_retry(engine)
        require_current_schema(engine)
        self._ledger = Ledger(engine, delivery_rules(s))
        recovered = self._ledger.recover_interrupted(s.notify_unconfirmed_sends == "resend", now_ms())
        if recovered:
            log.warning("sends interrupted by a restart: %d (%s)", recovered,
                        "sent again with the same idempotency key" if s.notify_unconfirmed_sends == "resend"
                        else "held as unconfirmed")
        self._sender = Sender(self._ledger, build_providers(s), {
            "sms": TokenBucket(s.notify_sms_rate_per_s), "email": TokenBucket(s.notify_email_rate_per_s),
        }, templates, max_in_flight=s.notify_max_in_flight, interval_s=s.notify_dispatch_interval_ms / 1000,
            labels=(context.connector_name, str(context.task_id)))
        self._sender.start()
        log.info("notify sink started", extra={"dialect": engine.dialect.name, "sms": s.notify_sms_provider,
                                               "email": s.notify_email_provider})

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("NotifySinkTask.start() was not called")
        return self._ledger

    def open(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        return self.ledger.stored_offsets(partitions) or None

    def put(self, records: Sequence[SinkRecord]) -> None:
        # Intake could go on (the ledger keeps everything), but an outage must show in status: the
        # runtime retries this put with backoff, reports RETRYING with the reason, and intake pauses.
        outage = self._sender.outage(PROVIDER_OUTAGE_S) if self._sender is not None else None
        if outage is not None:
            raise RetriableError(outage)
        backlog = self.ledger.backlog(now_ms())
        if backlog > self.settings.notify_max_backlog:  # the providers are not keeping up: pause intake
            raise RetriableError(f"{backlog} notifications are due and unsent; waiting for the providers")
        contacts: list[tuple[str, Contact | None]] = []
        events: list[ReportEvent] = []
        contacts_topic = self.settings.notify_contacts_topic
        for record in records:
            try:
                if record.topic == contacts_topic:
                    update = contact(record)
                    patient = update.patient_id if update is not None else record.key
                    if patient:
                        contacts.append((patient, update))
                else:
                    events.append(report_event(record))
            except PermanentError as exc:  # not a usable record: to the DLQ, the batch goes on
                self.context.report(record, exc)
        dead_lettered = []
        for message_id, reason, triggering in self.ledger.dead_letters():
            for record in triggering:
                self.context.report(record, PermanentError(f"notification {message_id} was refused: {reason}"))
            dead_lettered.append(message_id)
        self._contacts.extend(contacts)  # all or nothing per put
        self._events.extend(events)
        self._dead_lettered.extend(dead_lettered)

    def flush(self, offsets: dict[TopicPartition, int]) -> None:
        if not (self._contacts or self._events or self._dead_lettered or offsets):
            return
        outcome = self.ledger.record(self._contacts, self._events, offsets, now_ms(), self._dead_lettered)
        log.debug("notify batch recorded", extra={"contacts": len(self._contacts), **outcome})
        self.abort()
        if self._sender is not None:
            self._sender.wake()

    def abort(self) -> None:
        self._contacts = []
        self._events = []
        self._dead_lettered = []

    def stop(self) -> None:
        self.abort()
        if self._sender is not None:
            self._sender.stop(self.settings.shutdown_timeout_ms / 1000)
        if self._engine is not None:
            self._engine.dispose()


def delivery_rules(s: NotifySettings) -> DeliveryRules:
    oncall = {channel: address for channel, address in (("sms", s.notify_critical_sms_to),
                                                         ("email", s.notify_critical_email_to)) if address}
    return DeliveryRules(
        channels=tuple(s.channel_preference), combine_window_ms=s.notify_combine_window_ms,
        max_event_age_ms=s.notify_max_event_age_ms, contact_wait_ms=s.notify_contact_wait_ms,
        quiet_hours=QuietHours.parse(s.notify_quiet_hours_start, s.notify_quiet_hours_end),
        caps={"sms": Caps(s.notify_sms_max_per_day, s.notify_sms_max_per_week),
              "email": Caps(s.notify_email_max_per_day, s.notify_email_max_per_week)},
        oncall=oncall, retry_budget_ms=s.notify_retry_budget_ms)


def build_providers(s: NotifySettings) -> dict[str, Provider]:
    timeout = s.notify_send_timeout_ms / 1000
    idempotency = s.notify_idempotency_header or None
    sms: Provider
    email: Provider
    if s.notify_sms_provider == "twilio":
        sms = TwilioSms(base_url=s.twilio_base_url, account_sid=s.twilio_account_sid or "",
                        auth_token=s.twilio_auth_token or "", from_number=s.twilio_from,
                        messaging_service_sid=s.twilio_messaging_service_sid, timeout_s=timeout,
                        max_connections=s.notify_max_in_flight, idempotency_header=idempotency)
    else:
        sms = FileOutbox(s.notify_outbox_path, "sms")
    if s.notify_email_provider == "sendgrid":
        email = SendGridEmail(base_url=s.sendgrid_base_url, api_key=s.sendgrid_api_key or "",
                              from_email=s.sendgrid_from or "", timeout_s=timeout,
                              max_connections=s.notify_max_in_flight, idempotency_header=idempotency)
    else:
        email = FileOutbox(s.notify_outbox_path, "email")
    return {"sms": sms, "email": email}


def make_task(settings: NotifySettings) -> NotifySinkTask:
    if not isinstance(settings, NotifySettings):
        raise PermanentError("sink-notify needs NotifySettings")
    return NotifySinkTask(settings)
