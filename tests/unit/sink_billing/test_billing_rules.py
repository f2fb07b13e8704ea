"""The table in connectors/sink_billing/rules.py, row by row."""

from __future__ import annotations

from decimal import Decimal

import pytest

from connectors.sink_billing.events import BillingEvent, billing_event
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import NOTHING, ChargeRules, ChargeState, fold_batch
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST
from tests.unit.sink_billing.billing_records import GLUCOSE, UNPRICED, ReportStream

RULES = ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))


def event(stream: ReportStream, status: str, **kwargs: object) -> BillingEvent:
    return billing_event(stream.report(status, **kwargs))  # type: ignore[arg-type]


def charged(stream: ReportStream, version: int = 1) -> ChargeState:
    outcome = RULES.apply(None, event(stream, "final", version=version))
    assert outcome.state is not None
    return outcome.state


@pytest.mark.parametrize("status", ["final", "amended", "corrected", "appended"])
def test_first_final_like_status_charges_the_price_on_the_service_date(status: str) -> None:
    outcome = RULES.apply(None, event(ReportStream(), status))
    assert outcome.ledger is not None and outcome.ledger.entry_type == "charge"
    assert (outcome.ledger.amount, outcome.ledger.currency) == (Decimal("9.00"), "USD")
    assert outcome.state is not None and outcome.state.status == "charged" and outcome.unpriced is None


def test_price_follows_the_service_date_not_the_processing_date() -> None:
    outcome = RULES.apply(None, event(ReportStream(), "final", timestamp_ms=1_735_689_600_000))  # 2025-01-01
    assert outcome.ledger is not None and outcome.ledger.amount == Decimal("8.50")


@pytest.mark.parametrize("status", ["registered", "partial", "preliminary"])
def test_results_that_are_not_out_yet_do_nothing(status: str) -> None:
    stream = ReportStream()
    assert RULES.apply(None, event(stream, status)).state is None
    assert RULES.apply(charged(stream), event(stream, status, version=5)) == RULES.apply(None, event(stream, status))


def test_newer_correction_is_not_a_new_charge_but_moves_the_latest_version() -> None:
    stream = ReportStream()
    state = charged(stream, version=1)
    outcome = RULES.apply(state, event(stream, "corrected", version=2))
    assert outcome.ledger is not None and outcome.ledger.entry_type == "correction"
    assert outcome.ledger.amount == 0
    assert outcome.state is not None and outcome.state.latest_version == 2
    assert outcome.state.amount == state.amount and outcome.state.charge_event_id == state.charge_event_id


@pytest.mark.parametrize("version", [1, 0])
def test_duplicate_or_stale_final_after_charge_does_nothing(version: int) -> None:
    stream = ReportStream()
    outcome = RULES.apply(charged(stream, version=1), event(stream, "final", version=version))
    assert outcome.state is None and outcome.ledger is None and outcome.unpriced is None


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_retraction_after_charge_reverses_with_the_negative_charged_amount(status: str) -> None:
    stream = ReportStream()
    outcome = RULES.apply(charged(stream), event(stream, status, version=2))
    assert outcome.ledger is not None and outcome.ledger.entry_type == "reversal"
    assert outcome.ledger.amount == Decimal("-9.00")
    assert outcome.state is not None and outcome.state.status == "reversed"


def reversed_at(stream: ReportStream, version: int, **kwargs: object) -> ChargeState:
    state = RULES.apply(charged(stream), event(stream, "cancelled", version=version, **kwargs)).state
    assert state is not None and state.status == "reversed"
    return state


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("status", ["final", "corrected", "cancelled", "entered-in-error"])
def test_after_a_reversal_an_event_not_newer_than_it_does_nothing(status: str, version: int) -> None:
    stream = ReportStream()
    assert RULES.apply(reversed_at(stream, 2), event(stream, status, version=version, event_id="LATE")) == NOTHING


# --- Re-billing: a test released again after its reversal ---

@pytest.mark.parametrize("status", ["final", "amended", "corrected", "appended"])
def test_a_release_newer_than_the_reversal_rebills_at_the_price_on_its_service_date(status: str) -> None:
    stream = ReportStream()
    reversed_state = reversed_at(stream, 2)
    rebill = event(stream, status, version=3, timestamp_ms=1_735_689_600_000)  # 2025-01-01: 8.50
    outcome = RULES.apply(reversed_state, rebill)
    assert outcome.ledger is not None
    assert (outcome.ledger.entry_type, outcome.ledger.amount, outcome.ledger.charge_event_id) == (
        "rebill", Decimal("8.50"), rebill.event_id)
    assert outcome.state is not None
    assert (outcome.state.status, outcome.state.amount, outcome.state.charge_event_id, outcome.state.latest_version) \
        == ("charged", Decimal("8.50"), rebill.event_id, 3)


def test_a_rebill_is_reversed_with_its_own_amount_and_names_the_rebill() -> None:
    stream = ReportStream()
    rebilled = RULES.apply(reversed_at(stream, 2), event(stream, "final", version=3, timestamp_ms=1_735_689_600_000))
    assert rebilled.state is not None and rebilled.ledger is not None
    outcome = RULES.apply(rebilled.state, event(stream, "entered-in-error", version=4))
    assert outcome.ledger is not None
    assert (outcome.ledger.entry_type, outcome.ledger.amount, outcome.ledger.charge_event_id) == (
        "reversal", Decimal("-8.50"), rebilled.ledger.event.event_id)
    assert outcome.state is not None and outcome.state.status == "reversed"


def test_a_newer_retraction_of_a_reversed_test_keeps_a_late_older_final_from_rebilling() -> None:
    stream = ReportStream()
    reversed_state = reversed_at(stream, 2)
    newer = RULES.apply(reversed_state, event(stream, "entered-in-error", version=6))
    assert newer.ledger is None and newer.state is not None
    assert (newer.state.status, newer.state.latest_version) == ("reversed", 6)
    assert RULES.apply(newer.state, event(stream, "final", version=5)) == NOTHING  # released before v6: late
    assert RULES.apply(newer.state, event(stream, "final", version=7)).ledger is not None


def test_a_rebill_without_a_price_is_recorded_for_review_and_the_test_stays_reversed() -> None:
    stream = ReportStream()
    outcome = RULES.apply(reversed_at(stream, 2), event(stream, "final", version=3, timestamp_ms=946_684_800_000))
    assert outcome.state is None and outcome.ledger is None
    assert outcome.unpriced is not None and outcome.unpriced.reason == "no_price_on_service_date"


def test_corrections_and_reversals_name_the_charge_they_belong_to() -> None:
    stream = ReportStream()
    state = charged(stream, version=2)
    correction = RULES.apply(state, event(stream, "corrected", version=3))
    assert correction.ledger is not None and correction.ledger.charge_event_id == state.charge_event_id
    assert correction.state is not None
    reversal = RULES.apply(correction.state, event(stream, "cancelled", version=4))
    assert reversal.ledger is not None and reversal.ledger.charge_event_id == state.charge_event_id


def test_fold_charge_reverse_rebill_reverse_never_holds_two_live_charges() -> None:
    stream = ReportStream()
    events = [event(stream, "final", version=2), event(stream, "cancelled", version=3),
              event(stream, "final", version=4), event(stream, "final", version=4, event_id="DUP"),
              event(stream, "corrected", version=5), event(stream, "cancelled", version=6),
              event(stream, "final", version=5)]  # late: released before the last retraction
    outcome = fold_batch(RULES, {}, events)
    assert [e.entry_type for e in outcome.ledger] == ["charge", "reversal", "rebill", "correction", "reversal"]
    assert sum(e.amount for e in outcome.ledger) == 0
    charge, first_reversal, rebill, correction, second_reversal = outcome.ledger
    assert first_reversal.charge_event_id == charge.event.event_id
    assert correction.charge_event_id == second_reversal.charge_event_id == rebill.event.event_id
    assert fold_batch(RULES, outcome.charges, events).ledger == []  # re-read: nothing new


def test_test_not_on_price_list_is_recorded_as_unpriced_not_dropped() -> None:
    outcome = RULES.apply(None, event(ReportStream(), "final", test_code=UNPRICED))
    assert outcome.state is None and outcome.ledger is None
    assert outcome.unpriced is not None and outcome.unpriced.reason == "not_on_price_list"


def test_test_without_a_price_on_the_service_date_is_unpriced() -> None:
    outcome = RULES.apply(None, event(ReportStream(), "final", timestamp_ms=946_684_800_000))  # 2000-01-01
    assert outcome.unpriced is not None and outcome.unpriced.reason == "no_price_on_service_date"


def test_fold_applies_a_whole_life_in_one_batch_and_skips_repeated_event_ids() -> None:
    stream = ReportStream()
    events = [event(stream, "preliminary", version=1), event(stream, "final", version=2),
              event(stream, "final", version=2), event(stream, "corrected", version=3),
              event(stream, "cancelled", version=4), event(stream, "final", test_code=UNPRICED)]
    outcome = fold_batch(RULES, {}, events)
    assert [e.entry_type for e in outcome.ledger] == ["charge", "correction", "reversal"]
    assert sum(e.amount for e in outcome.ledger) == 0
    assert [u.event.key.test_code for u in outcome.unpriced] == [UNPRICED]
    (state,) = outcome.charges.values()
    assert state.status == "reversed" and state.latest_version == 4 and state.key.test_code == GLUCOSE


def test_fold_reports_only_changed_charges() -> None:
    stream = ReportStream()
    stored = charged(stream, version=2)
    outcome = fold_batch(RULES, {stored.key: stored}, [event(stream, "final", version=2)])
    assert outcome.charges == {} and outcome.ledger == []


# --- Retractions before any charge are remembered (a re-sent final must not bill a cancelled test) ---

@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_retraction_without_a_charge_is_recorded_with_its_version_and_no_money(status: str) -> None:
    outcome = RULES.apply(None, event(ReportStream(), status, version=4))
    assert outcome.ledger is None and outcome.unpriced is None
    assert outcome.state is not None
    assert (outcome.state.status, outcome.state.latest_version, outcome.state.amount) == ("cancelled", 4, 0)
    assert outcome.state.charge_event_id is None


@pytest.mark.parametrize("version", [2, 4])
def test_redriven_final_not_newer_than_the_recorded_retraction_does_not_charge(version: int) -> None:
    stream = ReportStream()
    cancelled = RULES.apply(None, event(stream, "cancelled", version=4)).state
    outcome = RULES.apply(cancelled, event(stream, "final", version=version))
    assert outcome.state is None and outcome.ledger is None and outcome.unpriced is None


def test_final_newer_than_the_recorded_retraction_charges_once() -> None:
    stream = ReportStream()
    cancelled = RULES.apply(None, event(stream, "cancelled", version=4)).state
    outcome = RULES.apply(cancelled, event(stream, "final", version=5))
    assert outcome.ledger is not None and (outcome.ledger.entry_type, outcome.ledger.amount) == ("charge", 9)
    assert outcome.state is not None and (outcome.state.status, outcome.state.latest_version) == ("charged", 5)


def test_a_newer_retraction_moves_the_recorded_version_and_an_older_one_does_not() -> None:
    stream = ReportStream()
    cancelled = RULES.apply(None, event(stream, "cancelled", version=4)).state
    newer = RULES.apply(cancelled, event(stream, "entered-in-error", version=6))
    assert newer.state is not None and newer.state.latest_version == 6 and newer.ledger is None
    assert RULES.apply(newer.state, event(stream, "final", version=5)) == NOTHING
    assert RULES.apply(cancelled, event(stream, "cancelled", version=3)) == NOTHING


def test_fold_a_cancellation_then_its_redriven_final_bills_nothing() -> None:
    stream = ReportStream()
    outcome = fold_batch(RULES, {}, [event(stream, "cancelled", version=4), event(stream, "final", version=2)])
    assert outcome.ledger == [] and outcome.unpriced == []
    (state,) = outcome.charges.values()
    assert (state.status, state.latest_version) == ("cancelled", 4)


# --- Versions order retractions too, and re-reading changes nothing ---

@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_stale_retraction_after_a_newer_final_does_not_reverse(status: str) -> None:
    stream = ReportStream()
    assert RULES.apply(charged(stream, version=5), event(stream, status, version=1)) == NOTHING


def test_retraction_of_the_same_version_as_the_charge_reverses() -> None:
    stream = ReportStream()
    outcome = RULES.apply(charged(stream, version=4), event(stream, "cancelled", version=4))
    assert outcome.ledger is not None and outcome.ledger.entry_type == "reversal"


def test_re_reading_every_event_on_top_of_the_stored_states_changes_nothing() -> None:
    stream = ReportStream()
    events = [
        event(stream, "final", version=2), event(stream, "corrected", version=3, event_id="C1"),
        event(stream, "corrected", version=3, event_id="C2"), event(stream, "cancelled", version=4),
        event(stream, "entered-in-error", version=1),
        event(stream, "final", accession="ACC2", version=5), event(stream, "entered-in-error", accession="ACC2"),
        event(stream, "cancelled", accession="ACC3", version=4), event(stream, "final", accession="ACC3", version=2),
        event(stream, "final", accession="ACC4", version=2), event(stream, "corrected", accession="ACC4", version=3,
                                                                    event_id="C4"),
    ]
    first = fold_batch(RULES, {}, events)
    again = fold_batch(RULES, first.charges, events)
    assert again.charges == {} and again.ledger == []
    for start in range(len(events)):  # re-read from any offset
        assert fold_batch(RULES, first.charges, events[start:]).ledger == []


# --- Equal versions: HL7 gives every correction version 3 ---

def test_second_correction_with_the_same_version_but_later_time_is_recorded() -> None:
    stream = ReportStream()
    state = charged(stream, version=2)
    first = RULES.apply(state, event(stream, "corrected", version=3, event_id="C1"))
    assert first.state is not None
    second = RULES.apply(first.state, event(stream, "corrected", version=3, event_id="C2"))  # one offset later
    assert second.ledger is not None and (second.ledger.entry_type, second.ledger.amount) == ("correction", 0)
    assert second.state is not None and second.state.latest_event is second.ledger.event
    assert second.state.latest_event_time == second.ledger.event.event_time
    assert second.state.charge_event_id == state.charge_event_id and second.state.amount == state.amount


def test_equal_version_correction_that_is_not_later_does_nothing() -> None:
    stream = ReportStream(next_offset=10)
    later = event(stream, "corrected", version=3, event_id="C2")
    state = RULES.apply(charged(ReportStream(), version=2), later).state
    assert RULES.apply(state, later) == NOTHING  # the same correction again
    earlier = event(ReportStream(next_offset=5), "corrected", version=3, event_id="C1")
    assert RULES.apply(state, earlier) == NOTHING  # an older correction, re-read


def test_equal_version_final_with_a_later_time_is_not_a_correction() -> None:
    stream = ReportStream()
    state = charged(stream, version=2)
    assert RULES.apply(state, event(stream, "final", version=2, event_id="F2")) == NOTHING


# --- Event ids are shared by a report's tests: de-duplicate per bill key ---

def test_fold_bills_every_test_of_a_report_sharing_one_event_id() -> None:
    stream = ReportStream()
    events = [event(stream, "final", test_code=GLUCOSE, event_id="E1"),
              event(stream, "final", test_code="718-7", event_id="E1"),
              event(stream, "final", test_code=UNPRICED, event_id="E1"),
              event(stream, "final", test_code="718-7", event_id="E1")]  # a true duplicate
    outcome = fold_batch(RULES, {}, events)
    assert sorted((e.event.key.test_code, e.entry_type) for e in outcome.ledger) == [
        ("2345-7", "charge"), ("718-7", "charge")]
    assert [u.event.key.test_code for u in outcome.unpriced] == [UNPRICED]
