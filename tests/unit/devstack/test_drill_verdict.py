"""The crash drill's checks find what they are there to find: a lost or doubled row, charge,
message or dead letter, and a message to an opted-out patient."""

from __future__ import annotations

from collections import Counter

import pytest

from devstack.drill.stack import ONCALL_PHONE
from devstack.drill.stores import NotifyMessage, WarehouseRows
from devstack.drill.verdict import _billable, billing_verdict, dlq_verdict, notify_verdict, warehouse_verdict
from devstack.drill.workload import FINAL_LIKE, LabDay, plan_day


@pytest.fixture(scope="module")
def day() -> LabDay:
    return plan_day(seed=3, fhir_reports=60, hl7_reports=30, start_ms=1_780_000_000_000, span_ms=60_000)


def test_the_day_has_every_kind_of_trouble(day: LabDay) -> None:
    latest = day.latest_reports()
    statuses = {r.status for r in latest.values()}
    assert {"final", "cancelled"} <= statuses
    assert any(r.status == "corrected" for r in day.fhir + day.hl7)
    assert any(not p.sms_consent and not p.email_consent for p in day.patients())
    assert len(day.poison_markers()) == 6
    assert {s for s, _ in latest} == {"lis", "lis-hl7"}
    # Within one report, versions are released in order.
    for versions in (day.fhir, day.hl7):
        seen: dict[str, int] = {}
        for v in versions:
            assert v.version > seen.get(v.id, 0)
            seen[v.id] = v.version


def test_warehouse_counts_a_missing_and_a_doubled_result(day: LabDay) -> None:
    required, _ = day.result_ids()
    exact = Counter({event_id: 1 for event_id in required})
    assert warehouse_verdict(day, WarehouseRows(exact, Counter())).ok
    one = next(iter(required))
    missing = warehouse_verdict(day, WarehouseRows(exact - Counter({one: 1}), Counter()))
    doubled = warehouse_verdict(day, WarehouseRows(exact + Counter({one: 1}), Counter()))
    assert (missing.lost, missing.duplicated) == (1, 0)
    assert (doubled.lost, doubled.duplicated) == (0, 1)
    assert warehouse_verdict(day, WarehouseRows(exact + Counter({"no-such-result": 1}), Counter())).duplicated == 1


def test_billing_wants_one_live_charge_per_billable_test_and_a_reversal_per_charged_cancellation(day: LabDay) -> None:
    billable = _billable(day)
    ledger = [(*key, "charge", 9, f"e-{n}") for n, (key, must) in enumerate(billable.items()) if must]
    assert billing_verdict(day, ledger).ok
    cancelled = next(key for key, must in billable.items() if not must and key[2] == "58410-2")
    charged_then_reversed = ledger + [(*cancelled, "charge", 9, "c"), (*cancelled, "reversal", -9, "r")]
    assert billing_verdict(day, charged_then_reversed).ok
    assert billing_verdict(day, ledger + [(*cancelled, "charge", 9, "c")]).duplicated == 1  # no reversal
    assert billing_verdict(day, ledger + [ledger[0][:3] + ("charge", 9, "again")]).duplicated >= 1
    assert billing_verdict(day, ledger[1:]).lost == 1


def _sent_ready(day: LabDay) -> list[NotifyMessage]:
    return [NotifyMessage(f"k-{source}-{accession}", "patient", "results_ready", "sent", ((source, accession),))
            for (source, accession), r in day.latest_reports().items() if r.status in FINAL_LIKE and (
                (r.patient.sms_consent and r.patient.phone) or (r.patient.email_consent and r.patient.email))]


def test_notify_wants_one_sent_and_accepted_message_per_final_report(day: LabDay) -> None:
    messages = _sent_ready(day)
    accepted = [{"idempotency_key": m.key, "to": "+15550000001"} for m in messages]
    assert notify_verdict(day, messages, accepted).ok
    assert notify_verdict(day, messages[1:], accepted[1:]).lost == 1
    assert notify_verdict(day, messages, accepted[1:]).lost == 1  # the ledger says sent, the provider has none
    again = NotifyMessage("other-key", *[getattr(messages[0], f) for f in ("audience", "kind", "state", "accessions")])
    assert notify_verdict(day, messages + [again], accepted + [{"idempotency_key": "other-key"}]).duplicated == 1
    assert notify_verdict(day, messages, accepted + [{"idempotency_key": "unknown"}]).duplicated == 1
    alert = [{"idempotency_key": messages[0].key, "to": ONCALL_PHONE}]
    assert notify_verdict(day, messages, accepted[1:] + alert).ok


def test_notify_counts_a_message_to_an_opted_out_patient(day: LabDay) -> None:
    messages = _sent_ready(day)
    accepted = [{"idempotency_key": m.key, "to": "+15550000001"} for m in messages]
    opted_out = next(p for p in day.patients() if not p.sms_consent and not p.email_consent and (p.phone or p.email))
    accepted[0]["to"] = opted_out.phone or opted_out.email
    assert notify_verdict(day, messages, accepted).duplicated == 1


def test_every_poison_message_must_be_in_the_dead_letter_queue(day: LabDay) -> None:
    letters = [(m.encode(), b"...") for m in day.poison_markers()]
    assert dlq_verdict(day, letters).ok
    assert dlq_verdict(day, letters[1:]).lost == 1
    assert dlq_verdict(day, [(None, b"MSH|...|" + m.encode() + b"|P") for m in day.poison_markers()]).ok
