"""Billing follows the report's life (domain rule 5), as pure functions.

Per bill key (source system, accession, ordered test):

=============================  ==================  =====================================
current state                  event               outcome
=============================  ==================  =====================================
no charge                      final-like, priced  ``charge`` ledger row (+price), state charged
no charge                      final-like, no price  unpriced row for review, no state
no charge                      cancelled/EIE       nothing (nothing was billed)
charged                        final-like, newer   ``correction`` ledger row (0), latest version moves
charged                        final-like, not newer  nothing (duplicate or stale)
charged                        cancelled/EIE       ``reversal`` ledger row (−amount), state reversed
reversed                       anything            nothing (a reversal is final)
any                            registered/partial/preliminary  nothing
=============================  ==================  =====================================

"final-like" is final, amended, corrected or appended: a correction seen before
its final (the final was missed) still bills, once. Nothing here touches a
database, so the whole table is unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from connectors.sink_billing.events import CHARGING_STATUSES, REVERSING_STATUSES, BillingEvent, BillKey
from connectors.sink_billing.price_list import PriceList

ChargeStatus = Literal["charged", "reversed"]
EntryType = Literal["charge", "correction", "reversal"]
UnpricedReason = Literal["not_on_price_list", "no_price_on_service_date"]


@dataclass(frozen=True, slots=True)
class ChargeState:
    """One row of ``billing_charges``: what is billed for a bill key now."""

    key: BillKey
    status: ChargeStatus
    amount: Decimal
    currency: str
    price_effective_from: date
    service_time: datetime
    charge_event_id: str
    latest_version: int
    # The event that last changed this row (its audit trail); None when loaded from the database.
    latest_event: BillingEvent | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One immutable row of ``billing_ledger``: a money movement (or a zero-amount correction)."""

    event: BillingEvent
    entry_type: EntryType
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class UnpricedEvent:
    """One row of ``billing_unpriced_events``: would have billed, but no price applies."""

    event: BillingEvent
    reason: UnpricedReason


@dataclass(frozen=True, slots=True)
class Outcome:
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
        status = event.report_status
        if status in CHARGING_STATUSES:
            if state is None:
                return self._first_final(event)
            if state.status == "charged" and event.version > state.latest_version:
                new = replace(state, latest_version=event.version, latest_event=event)
                return Outcome(new, LedgerEntry(event, "correction", Decimal("0"), state.currency))
            return NOTHING
        if status in REVERSING_STATUSES and state is not None and state.status == "charged":
            new = replace(state, status="reversed", latest_version=max(state.latest_version, event.version),
                          latest_event=event)
            return Outcome(new, LedgerEntry(event, "reversal", -state.amount, state.currency))
        return NOTHING

    def _first_final(self, event: BillingEvent) -> Outcome:
        price = self.prices.lookup(event.key.test_code, event.service_date)
        if price is None:
            reason: UnpricedReason = (
                "no_price_on_service_date" if event.key.test_code in self.prices else "not_on_price_list"
            )
            return Outcome(unpriced=UnpricedEvent(event, reason))
        state = ChargeState(
            key=event.key, status="charged", amount=price.amount, currency=price.currency,
            price_effective_from=price.effective_from, service_time=event.event_time,
            charge_event_id=event.event_id, latest_version=event.version, latest_event=event,
        )
        return Outcome(state, LedgerEntry(event, "charge", price.amount, price.currency))


@dataclass
class BatchOutcome:
    """The rows one flush writes: changed charge states, ledger rows, unpriced rows."""

    charges: dict[BillKey, ChargeState]
    ledger: list[LedgerEntry]
    unpriced: list[UnpricedEvent]


def fold_batch(rules: ChargeRules, current: dict[BillKey, ChargeState], events: list[BillingEvent]) -> BatchOutcome:
    """Apply ``events`` in arrival order on top of the stored states ``current``.

    An event id seen twice in the batch is applied once (duplicates are normal
    upstream). ``charges`` holds only the keys whose state changed.
    """
    states = dict(current)
    changed: dict[BillKey, ChargeState] = {}
    ledger: list[LedgerEntry] = []
    unpriced: list[UnpricedEvent] = []
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        outcome = rules.apply(states.get(event.key), event)
        if outcome.state is not None:
            states[event.key] = changed[event.key] = outcome.state
        if outcome.ledger is not None:
            ledger.append(outcome.ledger)
        if outcome.unpriced is not None:
            unpriced.append(outcome.unpriced)
    return BatchOutcome(changed, ledger, unpriced)
