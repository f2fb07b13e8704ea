"""ChargePipeline: the next batch's rules run while the current batch commits.

A task owns its partitions and a bill key never changes partition (LabReports are
keyed by patient), so the charge states this task wrote stay the stored ones until
it writes them again. The pipeline keeps them in memory, per partition: a batch reads
from the database only the bill keys it has not seen (remembering the absent ones
too), folds the rules on top of what it knows, and hands the transaction to a single
commit thread. The database driver releases the GIL while the transaction runs, so
the runtime consumes, decodes and folds the next batch meanwhile.

The cache does not weaken the compare-and-set that protects against a second writer:
a charge row is still inserted only while absent, or updated only while its
``event_id`` is the one the cache holds (the event this task last wrote there). A
writer that changed the key in between makes the commit write fewer rows than sent,
which fails it; so does anything else that goes wrong in the background.

A failed background commit is found by the next flush (or when the runtime settles an
idle consumer): the cache is dropped, the runtime is asked to rewind to the offsets
stored in the database, and the error is raised. The first flush after that (and after
start) runs cold: it reads every state and waits for its commit, so the runtime's
retries, and its split of a batch that holds a poison record, apply to it as to any
flush.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from common import RetriableError, TopicPartition
from common.errors import safe_message
from connectors.sink_billing.events import BillingEvent, BillKey, new_tuple
from connectors.sink_billing.rules import BatchOutcome, ChargeState, fold_batch
from connectors.sink_billing.writer import ChargeWriter

log = logging.getLogger(__name__)


class ChargePipeline:
    """Known charge states per partition, and at most one commit in flight."""

    def __init__(self, writer: ChargeWriter, rewind: Callable[[], None], max_keys: int) -> None:
        """``rewind`` asks the runtime to resume from the stored offsets (SinkTaskContext.rewind);
        past ``max_keys`` known states the memory is emptied (between two commits) and refilled."""
        self.writer = writer
        self._rewind = rewind
        self._max_keys = max_keys
        # None: read from the database as absent (and not written since). Keys and states (all
        # fields but the key) are held as plain tuples: the cyclic GC stops tracking an exact tuple
        # of atomic values (strings, numbers, dates), never a NamedTuple, and every full
        # collection would walk them all.
        self._states: dict[tuple[str, str, str], tuple[Any, ...] | None] = {}
        self._keys_by_partition: dict[TopicPartition, set[tuple[str, str, str]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="billing-commit")
        self._in_flight: Future[None] | None = None
        self._in_flight_offsets: dict[TopicPartition, int] = {}
        self._durable: dict[TopicPartition, int] = {}  # committed to the database, not yet to the group
        self._cold = True

    @property
    def cached_bill_keys(self) -> int:
        return len(self._states)

    def flush(self, events: Sequence[BillingEvent], offsets: dict[TopicPartition, int]) -> BatchOutcome:
        if len(self._states) > self._max_keys:
            # Only once nothing is in flight: a state read while its commit runs would be stale.
            self._settle(rewind=True)
            self._states.clear()
            self._keys_by_partition.clear()
        read = self._known_states(events)
        outcome = fold_batch(self.writer.rules, read, list(events))
        if self._cold:  # nothing is in flight: forget() follows every failure
            try:
                self.writer.commit(events, read, outcome, offsets)
            except BaseException:
                self.forget()
                raise
            self._remember(events, outcome)
            self._durable.update(offsets)
            self._cold = False
            return outcome
        self._settle(rewind=True)  # the previous batch's commit: its failure invalidates this fold too
        self._remember(events, outcome)
        self._in_flight = self._pool.submit(self.writer.commit, events, read, outcome, offsets)
        self._in_flight_offsets = dict(offsets)
        return outcome

    def durable_offsets(self, wait: bool) -> dict[TopicPartition, int]:
        """Offsets committed to the database since the last call (``wait``: the commit in flight too)."""
        in_flight = self._in_flight
        if wait or (in_flight is not None and in_flight.done() and in_flight.exception() is None):
            self._settle(rewind=True)
        durable, self._durable = self._durable, {}
        return durable

    def drop(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget the states of ``partitions`` (revoked, or assigned anew)."""
        for partition in partitions:
            for key in self._keys_by_partition.pop(partition, ()):
                self._states.pop(key, None)

    def forget(self) -> None:
        """Drop every state: the next flush reads them again and commits before it returns."""
        self._states.clear()
        self._keys_by_partition.clear()
        self._cold = True

    def finish(self) -> None:
        """Wait for the commit in flight (revocation, shutdown); a failure only drops the cache:
        nothing of it is stored, so whoever resumes from the stored offsets reads it again."""
        try:
            self._settle(rewind=False)
        except RetriableError as exc:
            log.warning("the last billing commit failed; it is read again from the stored offsets (%s)",
                        safe_message(exc))

    def close(self) -> None:
        self.finish()
        self._pool.shutdown(wait=True)

    def _settle(self, rewind: bool) -> None:
        future, self._in_flight = self._in_flight, None
        if future is None:
            return
        try:
            future.result()
        except Exception as exc:
            self.forget()
            if rewind:
                self._rewind()
            raise RetriableError(f"a billing commit failed in the background ({safe_message(exc)}); "
                                 "resuming from the offsets stored with the rows") from exc
        self._durable.update(self._in_flight_offsets)

    def _known_states(self, events: Sequence[BillingEvent]) -> dict[BillKey, ChargeState]:
        """The states of the batch's bill keys: from memory, the unseen ones from the database."""
        states = self._states
        unseen = {e.key for e in events if e.key not in states}
        if unseen:
            stored = self.writer.read_states(unseen)
            for key in unseen:
                state = stored.get(key)
                states[tuple(key)] = None if state is None else state[1:]
            partitions = self._keys_by_partition
            for e in events:
                if e.key in unseen:
                    partitions.setdefault((e.topic, e.partition), set()).add(tuple(e.key))
        known: dict[BillKey, ChargeState] = {}
        for e in events:
            state = states[e.key]
            if state is not None:  # a ChargeState again, keyed by the event's BillKey
                known[e.key] = new_tuple(ChargeState, (e.key, *state))
        return known

    def _remember(self, events: Sequence[BillingEvent], outcome: BatchOutcome) -> None:
        """The states this batch writes, with the compare-and-set token its rows will carry."""
        states = self._states
        for key, state in outcome.charges.items():
            states[tuple(key)] = state.as_written()[1:]
