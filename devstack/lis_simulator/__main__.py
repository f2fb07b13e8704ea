"""`python -m devstack.lis_simulator --fhir-port P --mllp-target host:port ...`

Serves the FHIR subset on 127.0.0.1:P and/or sends ORU^R01 to an MLLP listener,
from ``--reports`` generated reports, released at ``--rate`` reports/s (0 = all at
once). Fault switches mirror :class:`FhirFaults` / :class:`Hl7Faults`.
"""

from __future__ import annotations

import argparse
import sys
import time

from devstack.lis_simulator.dataset import generate
from devstack.lis_simulator.fhir_server import FhirSimulator
from devstack.lis_simulator.hl7_sender import Hl7Faults, Hl7Feed, MllpSender


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.lis_simulator")
    p.add_argument("--fhir-port", type=int, help="serve FHIR on 127.0.0.1:PORT")
    p.add_argument("--mllp-target", help="host:port of an MLLP listener to send ORU^R01 to")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reports", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0, help="reports per second (0 = all at once)")
    p.add_argument("--token", help="require this bearer token")
    p.add_argument("--max-count", type=int, default=10_000, help="server cap on _count")
    p.add_argument("--fail-every", type=int, default=0, help="FHIR: a 500 every N requests")
    p.add_argument("--page-delay", type=float, default=0.0, help="FHIR: seconds per page")
    p.add_argument("--expire-cursors", action="store_true", help="FHIR: every next link answers 410")
    p.add_argument("--late-updates", type=int, default=0, help="FHIR: late-committed updates after release")
    p.add_argument("--duplicates", type=float, default=0.0, help="HL7: share of messages sent twice")
    p.add_argument("--drops", type=float, default=0.0, help="HL7: share of connections dropped before the ACK")
    p.add_argument("--malformed", type=int, default=0, help="HL7: malformed messages mixed in")
    p.add_argument("--encoding", default="utf-8")
    args = p.parse_args(argv)
    versions = generate(seed=args.seed, reports=args.reports)
    sim = None
    if args.fhir_port is not None:
        sim = FhirSimulator(max_count=args.max_count, token=args.token)
        print(f"FHIR base URL: {sim.start(args.fhir_port)}", file=sys.stderr, flush=True)
        sim.faults.expire_cursors = args.expire_cursors
        sim.faults.page_delay_s = args.page_delay
    sender = None
    messages = []
    if args.mllp_target:
        host, port = args.mllp_target.rsplit(":", 1)
        faults = Hl7Faults(duplicate_share=args.duplicates, drop_share=args.drops, malformed=args.malformed)
        messages = Hl7Feed(versions, seed=args.seed, faults=faults).messages()
        sender = MllpSender(host, int(port), faults=faults, encoding=args.encoding, seed=args.seed)
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    try:
        if sim is not None:
            if interval == 0:
                sim.publish(versions)
            else:
                for i, version in enumerate(versions):
                    sim.publish(version)
                    if args.fail_every and i % args.fail_every == 0:
                        sim.faults.fail_next += 1
                    time.sleep(interval)
            for i in range(args.late_updates):
                sim.late_update(versions[i].id, lag_ms=60_000)
        if sender is not None:
            codes: dict[str, int] = {}
            for control, text in messages:
                code = sender.send(control, text)
                codes[code] = codes.get(code, 0) + 1
                if interval:
                    time.sleep(interval)
            sender.close()
            print(f"MLLP: sent {len(messages)} messages, ACKs {codes}", file=sys.stderr)
        if sim is not None:
            print(f"FHIR: serving {sim.result_count()} results; Ctrl-C to stop", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if sim is not None:
            sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
