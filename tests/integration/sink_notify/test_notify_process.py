"""sink-notify as a real process: the real broker, a local provider server over real sockets,
SIGKILLs at the dangerous moments, replays, quiet hours, provider faults and opt-outs."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta, timezone

from tests.integration.sink_notify.conftest import NotifyRun, contact, phone_of, report
from tests.support.kafka_helpers import consume_all, wait_for


def patients(n: int) -> list[str]:
    return [f"P{i:04d}" for i in range(n)]


def finals(names: list[str]) -> list[dict]:  # type: ignore[type-arg]
    return [event for i, p in enumerate(names)
            for event in (report(p, f"ACC{i:05d}", "preliminary"), report(p, f"ACC{i:05d}", "final"))]


def sms_to(notify: NotifyRun) -> list[str]:
    return [m["to"] for m in notify.providers.messages("sms")]


def test_one_message_per_final_report_across_a_sigkill_after_the_provider_accepted(notify: NotifyRun) -> None:
    names = patients(40)
    notify.produce_contacts(contact(p) for p in names)
    notify.produce_reports(finals(names))
    process = notify.start()
    # The provider stores the 10th message, then SIGKILLs the sink before answering: the ledger
    # still says "sending" for it.
    notify.providers.faults([{"kill_pid": process.pid, "signal": 9, "after": 9, "count": 1}])
    process.wait(60)
    assert process.returncode == -signal.SIGKILL
    assert len(sms_to(notify)) >= 10
    notify.start()
    wait_for(lambda: len(sms_to(notify)) >= 40, 60, "a message per final report")
    time.sleep(2)
    assert sorted(sms_to(notify)) == sorted(phone_of(p) for p in names)  # each patient exactly once
    assert notify.providers.stats()["duplicates_suppressed"] >= 1  # the interrupted send went again, same key
    states = dict(notify.ledger("SELECT state, count(*) FROM notify_messages GROUP BY state"))
    assert states == {"sent": 40}


def test_a_batch_redelivered_after_a_crash_before_the_offset_commit_sends_nothing_twice(notify: NotifyRun) -> None:
    names = patients(30)
    notify.produce_contacts(contact(p) for p in names)
    notify.produce_reports(finals(names))
    first = notify.start(CRASH_AFTER_FLUSHES=1)
    first.wait(60)
    assert first.returncode == -signal.SIGKILL
    notify.start()
    wait_for(lambda: len(sms_to(notify)) >= 30, 60, "every report notified")
    time.sleep(2)
    assert sorted(sms_to(notify)) == sorted(phone_of(p) for p in names)


def test_a_full_replay_of_the_topics_sends_nothing(notify: NotifyRun) -> None:
    names = patients(20)
    events = finals(names)
    notify.produce_contacts(contact(p) for p in names)
    notify.produce_reports(events)
    process = notify.start()
    wait_for(lambda: len(sms_to(notify)) >= 20, 60, "every report notified")
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    # Re-read everything from the start (the ledger's offsets deleted, a fresh consumer group), and
    # the source's backfill of the same window once more on top.
    notify.ledger_execute("DELETE FROM notify_kafka_offsets")
    notify.produce_reports(events)
    notify.start(CONNECTOR_NAME=f"notify-replay-{notify.reports}")
    wait_for(lambda: sum(r[0] for r in notify.ledger("SELECT next_offset FROM notify_kafka_offsets "
                                                      f"WHERE topic = '{notify.reports}'")) >= 2 * len(events),
             60, "the replay read to the end")
    time.sleep(2)
    assert len(sms_to(notify)) == 20


def test_preliminary_final_corrected_gives_ready_then_updated(notify: NotifyRun) -> None:
    notify.produce_contacts([contact("P1")])
    notify.produce_reports([report("P1", "A1", "preliminary"), report("P1", "A1", "final")])
    notify.start()
    wait_for(lambda: len(sms_to(notify)) >= 1, 60, "the ready message")
    notify.produce_reports([report("P1", "A1", "corrected", version=2)])
    wait_for(lambda: len(sms_to(notify)) >= 2, 60, "the update notice")
    time.sleep(2)
    bodies = [m["body"] for m in notify.providers.messages("sms")]
    assert len(bodies) == 2
    assert "ready" in bodies[0].lower() and "update" in bodies[1].lower()
    assert not any("CANARY" in body for body in bodies)


def test_quiet_hours_defer_and_a_restart_during_the_deferral_still_sends_once(notify: NotifyRun) -> None:
    now = datetime.now(timezone.utc)
    opens = now + timedelta(seconds=20)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M:%S"), opens.strftime("%H:%M:%S")
    notify.produce_contacts([contact("P1")])
    notify.produce_reports([report("P1", "A1")])
    first = notify.start(NOTIFY_QUIET_HOURS_START=start, NOTIFY_QUIET_HOURS_END=end)
    wait_for(lambda: notify.ledger("SELECT 1 FROM notify_messages WHERE state = 'deferred' "
                                   "AND reason = 'quiet_hours'"), 30, "the deferral")
    first.kill()
    first.wait(10)
    assert sms_to(notify) == []
    notify.start(NOTIFY_QUIET_HOURS_START=start, NOTIFY_QUIET_HOURS_END=end)
    wait_for(lambda: len(sms_to(notify)) >= 1, 60, "the message when the window opens")
    sent = notify.providers.messages("sms")[0]["received_at"]
    assert sent >= opens.timestamp() - 1
    time.sleep(2)
    assert len(sms_to(notify)) == 1


def test_a_429_storm_is_ridden_out_at_the_provider_pace(notify: NotifyRun) -> None:
    names = patients(30)
    notify.providers.faults([{"channel": "sms", "rate_limit": 10}])
    notify.produce_contacts(contact(p) for p in names)
    notify.produce_reports(finals(names))
    notify.start()
    wait_for(lambda: len(sms_to(notify)) >= 30, 90, "every message despite the 429s")
    time.sleep(1)
    stats = notify.providers.stats()
    assert sorted(sms_to(notify)) == sorted(phone_of(p) for p in names)
    assert stats["throttled"] >= 1
    assert dict(notify.ledger("SELECT state, count(*) FROM notify_messages GROUP BY state")) == {"sent": 30}


def test_opted_out_patients_get_nothing_and_a_provider_opt_out_is_honoured(notify: NotifyRun) -> None:
    notify.produce_contacts([contact("NOCONSENT", sms=False), contact("STOPPED"), contact("OK")])
    notify.providers.faults([{"channel": "sms", "to": phone_of("STOPPED"), "code": 21610}])
    notify.produce_reports([report("NOCONSENT", "N1"), report("STOPPED", "S1"), report("OK", "K1")])
    notify.start()
    wait_for(lambda: phone_of("OK") in sms_to(notify), 60, "the consenting patient's message")
    wait_for(lambda: notify.ledger("SELECT 1 FROM notify_contacts WHERE sms_blocked = 'opted_out'"), 30,
             "the opt-out recorded")
    notify.produce_reports([report("STOPPED", "S2"), report("OK", "K2")])
    wait_for(lambda: sms_to(notify).count(phone_of("OK")) >= 2, 60, "the second message")
    time.sleep(2)
    assert phone_of("NOCONSENT") not in sms_to(notify)
    assert phone_of("STOPPED") not in sms_to(notify)
    requests_to_stopped = notify.providers.stats()
    dead = consume_all(notify.runtime.bootstrap, notify.runtime.dlq, expect=1)
    assert len(dead) == 1 and dict(dead[0].headers())["__connect.errors.topic"] == notify.reports.encode()
    assert requests_to_stopped["rejected"] == 1  # asked once, never again
    assert "STOPPED" not in notify.logs() and phone_of("OK") not in notify.logs()


def test_a_critical_report_alerts_on_call_once_even_in_quiet_hours(notify: NotifyRun) -> None:
    notify.produce_contacts([contact("P1")])
    notify.produce_reports([report("P1", "C1", "preliminary", critical=True), report("P1", "C1", critical=True)])
    notify.start(NOTIFY_QUIET_HOURS_START="00:00", NOTIFY_QUIET_HOURS_END="23:59:59",
                 NOTIFY_CRITICAL_SMS_TO="+15559990000")
    wait_for(lambda: "+15559990000" in sms_to(notify), 60, "the on-call alert")
    time.sleep(2)
    assert sms_to(notify) == ["+15559990000"]  # the patient's message waits for the morning
    assert "CANARY" not in notify.providers.messages("sms")[0]["body"]


def test_a_patient_who_chose_email_gets_one_email_and_notify_report_counts_it(notify: NotifyRun) -> None:
    notify.produce_contacts([contact("MAILER", sms=False, email="CANARY-mailer@example.org", email_consent=True)])
    notify.produce_reports([report("MAILER", "E1")])
    notify.start()
    wait_for(lambda: notify.providers.messages("email"), 60, "the e-mail")
    email = notify.providers.messages("email")[0]
    assert email["to"] == "CANARY-mailer@example.org" and email["subject"]
    assert "CANARY-TEST-NAME" not in email["body"] and "CANARY" not in email["subject"]
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "common", "notify", "report", "--since", "1h", "--json",
                          "--database", notify.ledger_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"outcome": "sent"' in out.stdout and '"channel": "email"' in out.stdout
    assert "CANARY" not in out.stdout + notify.logs()
