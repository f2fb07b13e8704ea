"""`labconnect notify report --since …`: what the notification sink did, counted by outcome and reason.

Reads the ledger named by NOTIFY_DATABASE_URL (or ``--database``). Prints counts only:
no patient, no address, no message text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from common import ConfigError
from common.config import load_settings


def _since(text: str) -> int:
    """An ISO instant (``2026-12-01T00:00:00Z``), a date, or a duration back from now (``24h``, ``7d``)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        start = datetime.now(timezone.utc) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    else:
        try:
            start = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError("an ISO instant, a date, or a duration like 24h or 7d") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
    return int(start.timestamp() * 1000)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect notify", description="the notification sink's ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="counts of messages by outcome and reason, and of events that sent nothing")
    report.add_argument("--since", type=_since, default=_since("24h"), help="ISO instant, date, or 24h / 7d (default 24h)")
    report.add_argument("--database", help="SQLAlchemy URL of the ledger (default: NOTIFY_DATABASE_URL)")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(list(argv))

    from connectors.sink_notify.ledger import DeliveryRules, Ledger
    from connectors.sink_notify.schema import ledger_engine, require_current_schema
    from connectors.sink_notify.settings import NotifySettings

    url = args.database or load_settings(NotifySettings).notify_database_url
    engine = ledger_engine(url)
    try:
        require_current_schema(engine)
        counts = Ledger(engine, DeliveryRules()).outcomes(args.since)
    finally:
        engine.dispose()
    messages = [dict(audience=a, outcome=s, reason=r, channel=c, count=n) for a, s, r, c, n in counts["messages"]]
    events = [dict(outcome=o, reason=r, count=n) for o, r, n in counts["events"]]
    if args.json:
        print(json.dumps({"since": args.since, "messages": messages, "events": events}, indent=2))
        return 0
    since = datetime.fromtimestamp(args.since / 1000, timezone.utc).isoformat(timespec="seconds")
    print(f"notifications since {since}")
    print(f"{'audience':<10} {'outcome':<12} {'reason':<20} {'channel':<8} {'count':>8}")
    for row in sorted(messages, key=lambda r: (r["audience"], r["outcome"], r["reason"] or "", r["channel"] or "")):
        print(f"{row['audience']:<10} {row['outcome']:<12} {row['reason'] or '-':<20} {row['channel'] or '-':<8} "
              f"{row['count']:>8}")
    print(f"\nreport events since {since}")
    print(f"{'outcome':<12} {'reason':<20} {'count':>8}")
    for row in sorted(events, key=lambda r: (r["outcome"], r["reason"] or "")):
        print(f"{row['outcome']:<12} {row['reason'] or '-':<20} {row['count']:>8}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ConfigError as error:
        print(f"labconnect: {error}", file=sys.stderr)
        sys.exit(2)
