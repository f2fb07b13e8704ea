"""Billing follows the report's life (domain rule 5), as pure functions.

Per bill key (source system, accession, ordered test), "newer" meaning a higher
version than the stored ``latest_version``:

=============================  ==================  =====================================
current state                  event               outcome
=============================  ==================  =====================================
none                           final-like, priced  ``charge`` ledger row (+price), state charged
none                           final-like, no price  unpriced row for review, no state
none                           cancelled/EIE       state cancelled (amount 0, its version), no ledger row
cancelled                      final-like, newer   as for none (re-released after the retraction)
cancelled                      cancelled/EIE, newer  state keeps cancelled, latest version moves
cancelled                      anything else       nothing (a re-sent or re-driven older final)
charged                        final-like, newer   ``correction`` ledger row (0), latest version moves
charged                        correction, same version, later event time  ``correction`` ledger row (0)
charged                        final-like, otherwise  nothing (duplicate or stale)
charged                        cancelled/EIE, same or newer  ``reversal`` ledger row (−amount), state reversed
charged                        cancelled/EIE, older  nothing (stale)
reversed                       final-like, newer   ``rebill`` ledger row (+price), state charged again
reversed                       final-like, no price  unpriced row for review, state unchanged
reversed                       cancelled/EIE, newer  state keeps reversed, latest version moves
reversed                       anything else       nothing (a re-sent or re-driven older event)
any                            registered/partial/preliminary  nothing
=============================  ==================  =====================================

"final-like" is final, amended, corrected or appended: a correction seen before
its final (the final was missed) still bills, once. HL7 versions are ordinal by
status (every correction is version 3), so a correction of the same version
counts when its event time is later; re-reading it or an older one does nothing.
A rebill is priced like a first charge (on its own service date) and a later
retraction reverses exactly its amount: a bill key never has two live charges
(charges + rebills − reversals is 0 or 1). A newer retraction of a reversed or
cancelled test moves the recorded version, so that a final released before it
(arriving late, or re-driven) never bills.
Nothing here touches a database, so the whole table is unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, NamedTuple

from connectors.sink_billing.events import (
    CHARGING_STATUSES, CORRECTING_STATUSES, REVERSING_STATUSES, BillingEvent, BillKey, new_tuple,
)
from connectors.sink_billing.price_list import PriceList

ChargeStatus = Literal["charged", "reversed", "cancelled"]
EntryType = Literal["charge", "correction", "reversal", "rebill"]
UnpricedReason = Literal["not_on_price_list", "no_price_on_service_date"]


# Immutable values as NamedTuples, not frozen dataclasses: every event builds several, and a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost more than the rules themselves.
class ChargeState(NamedTuple):
    """One row of ``billing_charges``: what is billed for a bill key now.

    A ``cancelled`` row records a retraction that came before any charge: amount 0 and
    no price or charge event (those fields are None), only the retraction's version.
    """

    key: BillKey
    status: ChargeStatus
    amount: Decimal
    currency: str | None
    price_effective_from: date | None
    service_time: datetime | None
    charge_event_id: str | None
    latest_version: int
    latest_event_time: datetime
    # The event that last changed this row (its audit trail); None when loaded from the database.
    latest_event: BillingEvent | None = None
    # The stored row's event_id when it was read: the writer's compare-and-set token (None: not read).
    stored_event_id: str | None = None

    def as_written(self) -> ChargeState:
        """This state once its row is written: the event is dropped (only the row needed it) and
        becomes the compare-and-set token (``latest_event`` and ``stored_event_id`` are the last
        two fields)."""
        assert self.latest_event is not None  # a changed state names its event
        return new_tuple(ChargeState, (*self[:-2], None, self.latest_event.event_id))

    def moved_to(self, event: BillingEvent, status: ChargeStatus | None = None) -> ChargeState:
        """This state after ``event`` changed it: the latest_* columns follow the event."""
        return self._replace(status=status or self.status, latest_version=event.version,
                             latest_event_time=event.event_time, latest_event=event)


class LedgerEntry(NamedTuple):
    """One immutable row of ``billing_ledger``: a money movement (or a zero-amount correction)."""

    event: BillingEvent
    entry_type: EntryType
    amount: Decimal
    currency: str
    # The charge or rebill this entry belongs to (a charge or rebill names itself): one reversal per charge.
    charge_event_id: str


class UnpricedEvent(NamedTuple):
    """One row of ``billing_unpriced_events``: would have billed, but no price applies."""

    event: BillingEvent
    reason: UnpricedReason


class Outcome(NamedTuple):
    """What one event does: the new state (None = unchanged) and the rows it adds."""

    state: ChargeState | None = None
    ledger: LedgerEntry | None = None
    unpriced: UnpricedEvent | None = None


NOTHING = Outcome()


class ChargeRules:
    """Applies the table in the module docstring, pricing from ``prices``."""

    def __init__(self, prices: PriceList) -> None:
        self.prices = prices

    def apply(self, state: ChargeState | None, event: BillingEvent) -> Outcome:
        if event.report_status in CHARGING_STATUSES:
            return self._released(state, event)
        if event.report_status in REVERSING_STATUSES:
            return self._retracted(state, event)
        return NOTHING

    def _released(self, state: ChargeState | None, event: BillingEvent) -> Outcome:
        if state is None:
            return self._priced(event, "charge")
        if state.status == "charged":
            if not _corrects(state, event):
                return NOTHING
            assert state.currency is not None and state.charge_event_id is not None  # a charged row is priced
            return Outcome(state.moved_to(event),
                           LedgerEntry(event, "correction", Decimal("0"), state.currency, state.charge_event_id))
        if event.version <= state.latest_version:
            # Not newer than the retraction: a re-sent or re-driven final of a retracted test.
            return NOTHING
        # Released again: nothing was billed before a cancelled row; a reversed one was billed and refunded.
        return self._priced(event, "charge" if state.status == "cancelled" else "rebill")

    def _retracted(self, state: ChargeState | None, event: BillingEvent) -> Outcome:
        if state is None:
            return Outcome(_cancelled(event))
        if state.status == "charged":
            if event.version < state.latest_version:
                return NOTHING  # a stale retraction of an older version
            assert state.currency is not None and state.charge_event_id is not None
            return Outcome(state.moved_to(event, "reversed"),
                           LedgerEntry(event, "reversal", -state.amount, state.currency, state.charge_event_id))
        # Nothing is billed (cancelled) or left to reverse (reversed); remembering the newer version keeps
        # a final released before this retraction from billing when it arrives late.
        return Outcome(state.moved_to(event)) if event.version > state.latest_version else NOTHING

    def _priced(self, event: BillingEvent, entry_type: EntryType) -> Outcome:
        """A charge (or rebill) at the price on the event's service date, or an unpriced row for review."""
        price = self.prices.lookup(event.key.test_code, event.service_date)
        if price is None:
            reason: UnpricedReason = (
                "no_price_on_service_date" if event.key.test_code in self.prices else "not_on_price_list"
            )
            return Outcome(unpriced=UnpricedEvent(event, reason))
        event_time = event.event_time
        state = new_tuple(ChargeState, (
            event.key, "charged", price.amount, price.currency, price.effective_from,
            event_time, event.event_id,  # service_time, charge_event_id
            event.version, event_time, event,  # latest_version, latest_event_time, latest_event
            None,  # stored_event_id: a new state was not read from the database
        ))
        return new_tuple(Outcome, (state, new_tuple(LedgerEntry, (
            event, entry_type, price.amount, price.currency, event.event_id)), None))


def _corrects(state: ChargeState, event: BillingEvent) -> bool:
    """A newer version, or (HL7: every correction is version 3) a later correction of the same version."""
    if event.version != state.latest_version:
        return event.version > state.latest_version
    return event.report_status in CORRECTING_STATUSES and event.event_time > state.latest_event_time


def _cancelled(event: BillingEvent) -> ChargeState:
    """A retraction before any charge, kept so that a final no newer than it never bills."""
    return ChargeState(
        key=event.key, status="cancelled", amount=Decimal("0"), currency=None, price_effective_from=None,
        service_time=None, charge_event_id=None, latest_version=event.version, latest_event_time=event.event_time,
        latest_event=event,
    )


@dataclass
class BatchOutcome:
    """The rows one flush writes: changed charge states, ledger rows, unpriced rows."""

    charges: dict[BillKey, ChargeState]
    ledger: list[LedgerEntry]
    unpriced: list[UnpricedEvent]


def fold_batch(rules: ChargeRules, current: dict[BillKey, ChargeState], events: list[BillingEvent]) -> BatchOutcome:
    """Apply ``events`` in arrival order on top of the stored states ``current``.

    An event seen twice in the batch is applied once (duplicates are normal
    upstream). Identity is the event id *and* the bill key: a report event's id
    does not name the test, so the tests of one report can share it.
    ``charges`` holds only the keys whose state changed.
    """
    states = dict(current)
    changed: dict[BillKey, ChargeState] = {}
    ledger: list[LedgerEntry] = []
    unpriced: list[UnpricedEvent] = []
    seen: set[tuple[str, BillKey]] = set()
    for event in events:
        if (event.event_id, event.key) in seen:
            continue
        seen.add((event.event_id, event.key))
        outcome = rules.apply(states.get(event.key), event)
        if outcome.state is not None:
            states[event.key] = changed[event.key] = outcome.state
        if outcome.ledger is not None:
            ledger.append(outcome.ledger)
        if outcome.unpriced is not None:
            unpriced.append(outcome.unpriced)
    return BatchOutcome(changed, ledger, unpriced)
