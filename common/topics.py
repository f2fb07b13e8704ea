"""`labconnect topics create`: the project's topics, created explicitly as in production
(brokers run with ``auto.create.topics.enable=false``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from common.config import client_properties
from common.kafka_clients import TOOL_LOG, require_reachable


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


COMPACTED = {"cleanup.policy": "compact"}

STANDARD_TOPICS = (
    TopicSpec("lab-results", 6),
    TopicSpec("lab-reports", 6),
    TopicSpec("patients", 6, COMPACTED),
    TopicSpec("notifications", 3),
    TopicSpec("billing-events", 3),
    # Dead letters keep their original timestamps: time-based retention could delete
    # a replayed record's dead letter at once, so they stay until an operator acts.
    TopicSpec("dead-letter", 1, {"retention.ms": "-1"}),
    TopicSpec("connect-offsets", 5, COMPACTED),
    # Every task re-writes its status every STATUS_HEARTBEAT_INTERVAL_MS; compaction never touches
    # the open segment, so an hour-long segment keeps what `labconnect status` reads small.
    TopicSpec("connect-status", 1, {**COMPACTED, "segment.ms": "3600000"}),
)


def create_topics(bootstrap: str | None, topics: tuple[TopicSpec, ...] = STANDARD_TOPICS,
                  replication_factor: int = 1) -> list[str]:
    """Create the topics that do not exist yet; return the names created. The client is configured
    by the KAFKA_* variables, ``bootstrap`` (when given) overriding KAFKA_BOOTSTRAP_SERVERS."""
    from confluent_kafka.admin import AdminClient, NewTopic

    config = client_properties(bootstrap)
    require_reachable(config)
    admin = AdminClient({**config, "logger": TOOL_LOG})
    existing = set(admin.list_topics(timeout=30).topics)
    wanted = [NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_factor, config=t.config)
              for t in topics if t.name not in existing]
    if not wanted:
        return []
    for name, future in admin.create_topics(wanted).items():
        future.result(timeout=30)
    return [t.topic for t in wanted]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect topics")
    parser.add_argument("action", choices=["create", "list"])
    parser.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS (other KAFKA_* variables apply too)")
    parser.add_argument("--replication-factor", type=int, default=1)
    args = parser.parse_args(argv)
    if args.action == "list":
        for spec in STANDARD_TOPICS:
            print(f"{spec.name:<16} partitions={spec.partitions} {spec.config or ''}")
        return 0
    created = create_topics(args.bootstrap, replication_factor=args.replication_factor)
    print("created: " + (", ".join(created) if created else "nothing (all exist)"))
    return 0
