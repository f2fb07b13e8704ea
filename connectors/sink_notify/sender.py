"""The sender: a thread running an asyncio loop that sends the ledger's due messages.

It claims due messages (the ledger commits each intent first), renders them, sends them
through the providers with at most ``max_in_flight`` requests in the air and one message per
patient at a time, and records the answers in batches. Deferred messages (quiet hours, caps,
a contact not there yet) are picked up when they fall due, also when no record arrives.
A crash between a provider's accept and the ledger's update leaves the message ``sending``;
the next start resolves it (:meth:`Ledger.recover_interrupted`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import Counter

from common.errors import safe_message
from connectors.sink_notify.ledger import Claim, Ledger
from connectors.sink_notify.limiter import TokenBucket
from connectors.sink_notify.providers import Accepted, OutgoingMessage, Provider, Rejected, RetryLater, SendResult
from connectors.sink_notify.templates import TemplateError, Templates

log = logging.getLogger(__name__)

# Labels are identifiers only: connector, task, channel and outcome, never a recipient.
MESSAGES = Counter("labconnect_notify_messages", "Provider answers to notification sends",
                   ("connector", "task", "channel", "outcome"))


def now_ms() -> int:
    return int(time.time() * 1000)


class Sender:
    def __init__(self, ledger: Ledger, providers: Mapping[str, Provider], limiters: Mapping[str, TokenBucket],
                 templates: Templates, *, max_in_flight: int, interval_s: float, labels: tuple[str, str],
                 clock: Callable[[], int] = now_ms) -> None:
        self.ledger = ledger
        self.providers = providers
        self.limiters = limiters
        self.templates = templates
        self.max_in_flight = max_in_flight
        self.interval_s = interval_s
        self.labels = labels
        self.clock = clock
        self.error: BaseException | None = None  # the last ledger failure, for the task to surface
        # channel -> (since when every answer said "retry later", the last reason): an outage.
        self.failing_since: dict[str, tuple[float, str]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="notify-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New messages may be due (called after a batch is recorded)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Claim nothing more, let the sends in flight finish and be recorded, then return."""
        self._stopping = True
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        in_flight: dict[asyncio.Task[tuple[Claim, SendResult]], str] = {}
        done: list[tuple[Claim, SendResult]] = []
        try:
            while not self._stopping or in_flight:
                if not self._stopping and len(in_flight) < self.max_in_flight:
                    try:
                        claims = self.ledger.claim(self.clock(), self.max_in_flight - len(in_flight),
                                                   set(in_flight.values()))
                        self.error = None
                    except Exception as exc:  # the ledger is away: retried on the next round
                        self._ledger_failed(exc)
                        claims = []
                    for claim in claims:
                        in_flight[asyncio.create_task(self._send(claim))] = claim.patient_id
                waiters: set[asyncio.Future[object]] = set(in_flight)
                wake = asyncio.ensure_future(self._wake.wait())
                finished, _ = await asyncio.wait({*waiters, wake}, timeout=self.interval_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                self._wake.clear()
                wake.cancel()
                for task in finished:
                    if task in in_flight:
                        del in_flight[task]  # type: ignore[arg-type]
                        done.append(task.result())  # type: ignore[arg-type]
                if done:
                    try:
                        self.ledger.finish(done, self.clock())
                        done = []
                    except Exception as exc:  # kept and recorded once the ledger is back
                        self._ledger_failed(exc)
                        if self._stopping:
                            break
                        await asyncio.sleep(1.0)
        finally:
            for provider in self.providers.values():
                await provider.aclose()

    def _ledger_failed(self, exc: BaseException) -> None:
        self.error = exc
        log.warning("notify ledger unavailable to the sender: %s", safe_message(exc))

    async def _send(self, claim: Claim) -> tuple[Claim, SendResult]:
        try:
            rendered = self.templates.render(claim.kind, claim.channel, claim.language, reference=claim.reference,
                                             report_count=claim.report_count,
                                             extra={"accessions": list(claim.accessions), "ordering_provider_id": None})
        except TemplateError as exc:  # an operator template that does not fit: this message cannot go
            result: SendResult = Rejected(reason=f"template: {safe_message(exc)}", code="template", contact_flag=None)
            return claim, self._count(claim, result)
        provider = self.providers[claim.channel]
        await self.limiters[claim.channel].acquire()
        try:
            result = await provider.send(OutgoingMessage(key=claim.key, channel=claim.channel,  # type: ignore[arg-type]
                                                         to=claim.to, body=rendered.body, subject=rendered.subject,
                                                         reference=claim.reference))
        except Exception as exc:  # a provider bug must not lose the message: retried like an outage
            result = RetryLater(reason=f"provider error {type(exc).__name__}", retry_after=None)
        if isinstance(result, RetryLater) and result.retry_after:
            self.limiters[claim.channel].penalize(result.retry_after)  # every sender on it backs off together
        return claim, self._count(claim, result)

    def outage(self, longer_than_s: float) -> str | None:
        """A provider that has answered nothing but "retry later" for ``longer_than_s``, described."""
        now = time.monotonic()
        for channel, (since, reason) in list(self.failing_since.items()):
            if now - since > longer_than_s:
                return f"{channel} provider failing for {now - since:.0f}s ({reason})"
        return None

    def _count(self, claim: Claim, result: SendResult) -> SendResult:
        outcome = {Accepted: "sent", RetryLater: "retry", Rejected: "rejected"}[type(result)]
        if isinstance(result, RetryLater):
            since = self.failing_since.get(claim.channel, (time.monotonic(), ""))[0]
            self.failing_since[claim.channel] = (since, result.reason)
        else:
            self.failing_since.pop(claim.channel, None)
        MESSAGES.labels(*self.labels, claim.channel, outcome).inc()
        if not isinstance(result, Accepted):  # a 429 storm is routine: only refusals are warnings
            level = logging.WARNING if isinstance(result, Rejected) else logging.DEBUG
            log.log(level, "%s %s message %s: %s", claim.channel, outcome, claim.reference, result.reason,
                    extra={"message_key": claim.key, "kind": claim.kind})
        return result
