"""What the stores must hold after the day, compared with what they hold: lost and duplicated
per sink, the poison messages in the dead-letter queue, the opted-out patients left alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devstack.drill.stack import ONCALL_PHONE
from devstack.drill.stores import NotifyMessage, WarehouseRows
from devstack.drill.workload import FINAL_LIKE, LabDay


@dataclass
class SinkVerdict:
    name: str
    what: str
    expected: int
    stored: int
    lost: int
    duplicated: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0


def warehouse_verdict(day: LabDay, rows: WarehouseRows) -> SinkVerdict:
    required, allowed = day.result_ids()
    live = rows.live
    verdict = SinkVerdict("sink-warehouse", "results, one row each", len(required), len(required & set(live)),
                          lost=len(required - set(live)), duplicated=sum(n - 1 for n in live.values() if n > 1))
    earlier = len((set(live) & allowed) - required)
    if earlier:
        verdict.notes.append(f"+{earlier} rows of result versions superseded later (seen by a poll in time)")
    foreign = set(live) - allowed
    if foreign:
        verdict.duplicated += len(foreign)  # rows of results the LIS never had: as wrong as a copy
        verdict.notes.append(f"{len(foreign)} rows of unknown results")
    return verdict


def _billable(day: LabDay) -> dict[tuple[str, str, str], int]:
    """Bill key -> the live charges it must end with (1: its last version is final-like and priced)."""
    from connectors.sink_billing.price_list import load_price_list
    from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST

    prices = load_price_list(EXAMPLE_PRICE_LIST)
    out = {}
    for (source, accession), report in day.latest_reports().items():
        service_day = datetime.fromtimestamp(report.updated_ms / 1000, UTC).date()
        priced = prices.lookup(report.code, service_day) is not None
        out[(source, accession, report.code)] = int(report.status in FINAL_LIKE and priced)
    return out


def billing_verdict(day: LabDay, ledger: list[tuple[Any, ...]]) -> SinkVerdict:
    entries: dict[tuple[str, str, str], Counter[str]] = {}
    for source, accession, code, entry_type, _amount, _event in ledger:
        entries.setdefault((source, accession, code), Counter())[entry_type] += 1
    expected = _billable(day)
    lost = duplicated = reversals = 0
    for key, must in expected.items():
        kinds = entries.get(key, Counter())
        live = kinds["charge"] + kinds["rebill"] - kinds["reversal"]
        reversals += kinds["reversal"]
        lost += max(0, must - live)
        duplicated += max(0, live - must) + max(0, kinds["charge"] - 1) + max(0, kinds["reversal"] - 1)
    unknown = set(entries) - set(expected)
    live_total = sum(c["charge"] + c["rebill"] - c["reversal"] for c in entries.values())
    verdict = SinkVerdict("sink-billing", "billable tests, one live charge each", sum(expected.values()),
                          live_total, lost, duplicated + len(unknown))
    cancelled = sum(1 for r in day.latest_reports().values() if r.status == "cancelled")
    verdict.notes.append(f"{reversals} reversals for {cancelled} cancelled reports (the rest never charged)")
    if unknown:
        verdict.notes.append(f"{len(unknown)} bill keys the LIS never had")
    return verdict


def notify_verdict(day: LabDay, messages: list[NotifyMessage], accepted: list[dict[str, Any]]) -> SinkVerdict:
    """Every final report of a patient who consented to a channel with an address: one
    "results ready" message, sent and accepted by the provider; nothing to anyone else."""
    eligible = set()
    for (source, accession), report in day.latest_reports().items():
        p = report.patient
        if report.status in FINAL_LIKE and ((p.sms_consent and p.phone) or (p.email_consent and p.email)):
            eligible.add((source, accession))
    accepted_keys = Counter(m.get("idempotency_key") for m in accepted)
    ready: Counter[tuple[str, str]] = Counter()
    for message in messages:
        if message.audience == "patient" and message.kind == "results_ready" and message.state == "sent":
            for accession in message.accessions:
                ready[accession] += 1
    sent_keys = {m.key for m in messages if m.state == "sent"}
    verdict = SinkVerdict("sink-notify", "final reports, one message each", len(eligible),
                          sum(1 for a in eligible if ready[a]), lost=len(eligible - set(ready)),
                          duplicated=sum(n - 1 for n in ready.values() if n > 1))
    unledgered = [k for k in accepted_keys if k not in sent_keys]
    lost_at_provider = [k for k in sent_keys if k not in accepted_keys]
    verdict.duplicated += len(unledgered) + sum(n - 1 for n in accepted_keys.values() if n > 1)
    verdict.lost += len(lost_at_provider)
    if unledgered:
        verdict.notes.append(f"{len(unledgered)} provider messages the ledger does not show as sent")
    if lost_at_provider:
        verdict.notes.append(f"{len(lost_at_provider)} messages sent per the ledger the provider never accepted")
    opted_out = {a for p in day.patients() if not p.sms_consent and not p.email_consent
                 for a in (p.phone, p.email) if a}
    to_opted_out = sum(1 for m in accepted if m.get("to") in opted_out)
    verdict.notes.append(f"{to_opted_out} messages to opted-out patients "
                         f"({len([p for p in day.patients() if not p.sms_consent and not p.email_consent])} of them)")
    verdict.duplicated += to_opted_out  # a message nobody may get counts against the sink
    alerts = sum(1 for m in accepted if m.get("to") == ONCALL_PHONE)
    critical = sum(1 for r in day.latest_reports().values() if r.status in FINAL_LIKE and any(
        x.flag in ("HH", "LL") for x in r.results))
    verdict.notes.append(f"{alerts} on-call alerts for {critical} critical reports")
    busy = sum(1 for m in messages if m.state in ("pending", "sending", "retrying"))
    if busy:
        verdict.notes.append(f"{busy} messages still in flight")
    return verdict


def dlq_verdict(day: LabDay, dead_letters: list[tuple[bytes | None, bytes | None]]) -> SinkVerdict:
    markers = day.poison_markers()
    blobs = [(key or b"") + b"\0" + (value or b"") for key, value in dead_letters]
    missing = [m for m in markers if not any(m.encode() in blob for blob in blobs)]
    verdict = SinkVerdict("dead-letter", "poison messages, at least once", len(markers), len(markers) - len(missing),
                          lost=len(missing), duplicated=0)
    verdict.notes.append(f"{len(dead_letters)} dead letters in all")
    return verdict


def table(day: LabDay, kills: Counter[str], faults: list[str], verdicts: list[SinkVerdict],
          replay: dict[str, str], extra: list[str]) -> str:
    results = sum(len(r.results) for r in day.fhir + day.hl7)
    lines = [
        f"LIS: {len(day.fhir)} FHIR and {len(day.hl7)} HL7 report versions, {results} results, "
        f"{len(day.poison_markers())} poison messages",
        "kills: " + ", ".join(f"{name} {n}" for name, n in sorted(kills.items())) + f"  (total {sum(kills.values())})",
        "faults: " + "; ".join(faults),
        *extra,
        "",
        f"{'store':<15} {'what':<38} {'expected':>8} {'stored':>7} {'lost':>5} {'duplicated':>10}  after replay",
    ]
    for v in verdicts:
        lines.append(f"{v.name:<15} {v.what:<38} {v.expected:>8} {v.stored:>7} {v.lost:>5} {v.duplicated:>10}  "
                     f"{replay.get(v.name, '-')}")
        lines += [f"{'':<17}{note}" for note in v.notes]
    return "\n".join(lines)
