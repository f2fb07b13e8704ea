"""The pipeline's memory of charge states: what it holds costs the garbage collector nothing,
and what it hands back is the ChargeState that was written."""

from __future__ import annotations

import gc
from typing import Any

from connectors.sink_billing.events import billing_event
from connectors.sink_billing.pipeline import ChargePipeline
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import BatchOutcome, ChargeRules, ChargeState
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST
from tests.unit.sink_billing.billing_records import ReportStream


class MemoryWriter:
    """A ChargeWriter's pipeline-facing side, over a dict: no database."""

    def __init__(self) -> None:
        self.rules = ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))
        self.stored: dict[Any, ChargeState] = {}
        self.folded_on: list[dict[Any, ChargeState]] = []

    def read_states(self, keys: set[Any]) -> dict[Any, ChargeState]:
        return {key: self.stored[key] for key in keys if key in self.stored}

    def commit(self, events: Any, read: dict[Any, ChargeState], outcome: BatchOutcome, offsets: Any) -> None:
        self.folded_on.append(dict(read))
        self.stored.update(outcome.charges)


def test_cached_states_are_plain_tuples_the_collector_stops_tracking() -> None:
    stream = ReportStream()
    events = [billing_event(stream.report("final", accession=f"ACC{n}")) for n in range(50)]
    pipeline = ChargePipeline(MemoryWriter(), rewind=lambda: None, max_keys=1000)  # type: ignore[arg-type]
    pipeline.flush(events, stream.positions())
    gc.collect()
    assert pipeline.cached_bill_keys == 50
    held = list(pipeline._states.items())
    assert all(type(key) is tuple and not gc.is_tracked(key) for key, _ in held)
    assert all(type(state) is tuple and not gc.is_tracked(state) for _, state in held)
    pipeline.close()


def test_a_cached_state_comes_back_as_the_charge_state_written_with_its_event_as_token() -> None:
    stream, writer = ReportStream(), MemoryWriter()
    pipeline = ChargePipeline(writer, rewind=lambda: None, max_keys=1000)  # type: ignore[arg-type]
    first = billing_event(stream.report("final"))
    pipeline.flush([first], stream.positions())  # cold: commits before it returns
    written = writer.stored[first.key]
    correction = billing_event(stream.report("corrected", version=2))
    outcome = pipeline.flush([correction], stream.positions())
    pipeline.close()
    (read,) = writer.folded_on[1].values()  # what the correction was folded on: from memory
    assert isinstance(read, ChargeState) and read.key == first.key and type(read.key) is type(first.key)
    assert read == written._replace(latest_event=None, stored_event_id=first.event_id)
    assert [entry.entry_type for entry in outcome.ledger] == ["correction"]
    assert outcome.charges[first.key].stored_event_id == first.event_id  # the compare-and-set token
