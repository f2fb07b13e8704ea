"""What each report event decides, and when the sender may send it (ledger on SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.sink_notify.events import contact as parse_contact, report_event
from connectors.sink_notify.ledger import DeliveryRules, Ledger
from connectors.sink_notify.pacing import DAY_MS, Caps, QuietHours
from connectors.sink_notify.providers import Accepted, Rejected, RetryLater
from connectors.sink_notify.schema import ledger_engine, upgrade
from tests.unit.sink_notify.notify_records import contact, now_ms, report

# Quiet hours that never apply unless a test asks for them.
NO_QUIET = QuietHours.parse("00:00", "00:00")


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """SQLite here; tests/integration/sink_notify runs these tests on PostgreSQL too."""
    return f"sqlite:///{tmp_path / 'notify.db'}"


def make_ledger(url: str, **rules: object) -> Ledger:
    engine = ledger_engine(url)
    upgrade(engine)
    defaults: dict[str, object] = dict(combine_window_ms=0, quiet_hours=NO_QUIET,
                                       caps={"sms": Caps(10, 30), "email": Caps(10, 30)})
    return Ledger(engine, DeliveryRules(**{**defaults, **rules}))  # type: ignore[arg-type]


def feed(ledger: Ledger, *records, now: int | None = None) -> dict[str, int]:  # type: ignore[no-untyped-def]
    contacts, events = [], []
    for record in records:
        if record.topic == "patients":
            parsed = parse_contact(record)
            contacts.append((parsed.patient_id, parsed))
        else:
            events.append(report_event(record))
    return ledger.record(contacts, events, {}, now or now_ms())


def send_all(ledger: Ledger, now: int | None = None, result=None):  # type: ignore[no-untyped-def]
    claims = ledger.claim(now or now_ms(), 100, set())
    ledger.finish([(c, result or Accepted(f"id-{c.id}")) for c in claims], now or now_ms())
    return claims


def test_one_ready_message_per_final_report_and_none_for_preliminary(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report(status="preliminary"), report(status="final"))
    claims = send_all(ledger)
    assert [(c.kind, c.channel, c.to) for c in claims] == [("results_ready", "sms", "+15550001111")]
    assert feed(ledger, report(status="final", event_id="ev-again")) == {"already_notified": 1}
    assert send_all(ledger) == []


def test_a_redelivered_event_is_a_no_op(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report())
    assert feed(ledger, report()) == {"duplicate": 1}
    assert len(send_all(ledger)) == 1


def test_a_correction_after_the_ready_message_sends_one_update(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report(status="preliminary"), report(status="final"))
    send_all(ledger)
    feed(ledger, report(status="corrected"))
    assert [c.kind for c in send_all(ledger)] == ["results_updated"]


def test_a_correction_while_the_ready_message_waits_adds_nothing(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report(status="final"), report(status="corrected"))
    assert [c.kind for c in send_all(ledger)] == ["results_ready"]


def test_reports_within_the_combine_window_share_one_message(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, combine_window_ms=60_000)
    now = now_ms()
    feed(ledger, contact(), report(accession="A1"), report(accession="A2"), report(accession="A3"), now=now)
    assert send_all(ledger, now) == []  # the window is still open
    claims = send_all(ledger, now + 60_000)
    assert [(c.kind, c.report_count) for c in claims] == [("results_ready", 3)]


def test_a_cancellation_removes_its_report_from_an_unsent_message(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, combine_window_ms=60_000)
    now = now_ms()
    feed(ledger, contact(), report(accession="A1"), report(accession="A1", status="cancelled"), now=now)
    assert send_all(ledger, now + 60_000) == []


@pytest.mark.parametrize("record", [report(replay=True), report(timestamp=now_ms() - 8 * DAY_MS)],
                         ids=["replay-header", "too-old"])
def test_replayed_and_old_events_notify_nobody(ledger_url: str, record) -> None:  # type: ignore[no-untyped-def]
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report(accession="X", status="final", critical=True, replay=True,
                                   event_id="ev-critical-replay"), record)
    assert send_all(ledger) == []


def test_critical_reports_alert_on_call_once_and_ignore_quiet_hours(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, quiet_hours=QuietHours.parse("00:00", "23:59"),
                         oncall={"sms": "+15559990000"})
    feed(ledger, contact(), report(critical=True), report(critical=True, event_id="ev-again"))
    claims = send_all(ledger)
    assert [(c.kind, c.audience, c.to) for c in claims] == [("critical_alert", "clinician", "+15559990000")]
    # The patient's own message waits for the morning.
    assert send_all(ledger) == []


def test_quiet_hours_defer_to_the_patient_morning(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, quiet_hours=QuietHours.parse("21:00", "08:00"))
    # 2026-12-04 03:00 UTC is 22:00 in New York: quiet until 08:00 local = 13:00 UTC.
    night = 1_796_353_200_000
    feed(ledger, contact(zone="America/New_York"), report(timestamp=night), now=night)
    assert send_all(ledger, night) == []
    assert send_all(ledger, night + 10 * 3_600_000 - 1) == []
    assert len(send_all(ledger, night + 10 * 3_600_000)) == 1


def test_caps_defer_a_second_sms_to_the_next_day(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, caps={"sms": Caps(1, 3), "email": Caps(1, 3)}, channels=("sms",))
    now = now_ms()
    feed(ledger, contact(), report(accession="A1"), now=now)
    assert len(send_all(ledger, now)) == 1
    feed(ledger, report(accession="A2"), now=now + 1000)
    assert send_all(ledger, now + 2000) == []
    assert len(send_all(ledger, now + DAY_MS + 1)) == 1


def test_a_report_waits_for_its_contact(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, report())
    assert send_all(ledger) == []
    feed(ledger, contact())
    assert len(send_all(ledger)) == 1


def test_no_consent_and_opt_out_by_provider_error_send_nothing_more(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, channels=("sms",))
    feed(ledger, contact("P2", sms=False), report("P2", "B1"))
    assert send_all(ledger) == []
    feed(ledger, contact(), report(accession="A1"))
    assert len(send_all(ledger, result=Rejected("21610 opted out", "21610", "opted_out"))) == 1
    feed(ledger, report(accession="A2"))
    assert send_all(ledger) == []
    assert [m for m, _, _ in ledger.dead_letters()]  # the refused message's event goes to the DLQ
    # A newer contact record with the same number does not undo the opt-out.
    feed(ledger, contact(), report(accession="A3"))
    assert send_all(ledger) == []


def test_a_retry_keeps_the_message_and_sends_it_once_later(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    now = now_ms()
    feed(ledger, contact(), report(), now=now)
    send_all(ledger, now, RetryLater("HTTP 503", retry_after=5))
    assert send_all(ledger, now + 4000) == []
    assert len(send_all(ledger, now + 5000)) == 1
    assert send_all(ledger, now + 60_000) == []


def test_an_interrupted_send_is_resent_with_the_same_key_or_held(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report())
    first = ledger.claim(now_ms(), 10, set())
    assert ledger.recover_interrupted(resend=True, now=now_ms()) == 1
    again = ledger.claim(now_ms(), 10, set())
    assert [c.key for c in again] == [c.key for c in first]
    assert ledger.recover_interrupted(resend=False, now=now_ms()) == 1
    assert ledger.claim(now_ms(), 10, set()) == []


def test_the_raw_record_is_kept_only_until_its_message_is_settled(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url)
    feed(ledger, contact(), report(accession="A1"), contact("P2", sms=False, email_consent=False),
         report("P2", "B1"))
    send_all(ledger)
    with ledger.engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT count(*) FROM notify_events WHERE raw_value IS NOT NULL").scalar()
    assert raw == 0


def test_a_contact_update_that_does_not_carry_the_phone_keeps_it(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, channels=("sms",))
    feed(ledger, contact())
    update = contact(phone=None, timestamp=now_ms() + 1)
    update.value["unknown_fields"] = ["phone"]  # type: ignore[index]
    feed(ledger, update, report())
    assert [c.to for c in send_all(ledger)] == ["+15550001111"]
    feed(ledger, contact(phone=None, timestamp=now_ms() + 2), report(accession="A2"))  # null, listed nowhere: removed
    assert send_all(ledger) == []


def test_messages_behind_a_deferred_one_wait_with_it_and_keep_the_order(ledger_url: str) -> None:
    ledger = make_ledger(ledger_url, caps={"sms": Caps(1, 3), "email": Caps(1, 3)}, channels=("sms",))
    now = now_ms()
    feed(ledger, contact(), report(accession="A1"), now=now)
    send_all(ledger, now)
    feed(ledger, report(accession="A2"), now=now + 1)  # capped until tomorrow
    send_all(ledger, now + 2)
    feed(ledger, report(accession="A3", status="final"), contact("P2"), report("P2", "B1"), now=now + 3)
    assert [c.patient_id for c in send_all(ledger, now + 4)] == ["P2"]  # A3 waits behind A2, P2 goes on
    later = send_all(ledger, now + DAY_MS + 5)
    assert [c.report_count for c in later] == [1]  # A2 first; A3 after it, in order (and capped again)
