"""`labconnect status`: one view of every connector's tasks, read from the compacted
status topic every task writes its state changes to."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from common.config import client_properties
from common.kafka_clients import TOOL_LOG, require_reachable


def read_statuses(bootstrap: str | None, topic: str, timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """Latest status value per key (``status-task-<connector>-<task>``); the client is configured
    by the KAFKA_* variables, ``bootstrap`` (when given) overriding KAFKA_BOOTSTRAP_SERVERS."""
    config = client_properties(bootstrap)
    require_reachable(config)
    consumer = Consumer({**config, "group.id": "labconnect-status-view", "logger": TOOL_LOG,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    statuses: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + timeout
        while True:  # a just-created topic may answer LEADER_NOT_AVAILABLE for a moment
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if metadata.error is None:
                break
            if metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise SystemExit(f"status topic {topic} not found (is KAFKA_BOOTSTRAP_SERVERS right?)")
            time.sleep(0.2)
        partitions = list(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                    continue
                key = (message.key() or b"").decode()
                if message.value() is None:
                    statuses.pop(key, None)
                else:
                    statuses[key] = json.loads(message.value())
    finally:
        consumer.close()
    return statuses


def expand_status(statuses: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Kafka Connect's ``GET /connectors?expand=status``: per connector, every task's status.

    Each task reports its own view of the connector; the connector shows FAILED if any task's
    view says so, else the view of its lowest task."""
    view: dict[str, dict[str, Any]] = {}
    for value in sorted(statuses.values(), key=lambda v: (v["name"], v["tasks"][0]["id"])):
        entry = view.setdefault(value["name"], {"status": {
            "name": value["name"], "connector": value["connector"], "tasks": [], "type": value["type"],
            "updated": value.get("updated", 0)}})["status"]
        entry["tasks"].extend(value["tasks"])
        entry["updated"] = max(entry["updated"], value.get("updated", 0))
        if value["connector"]["state"] == "FAILED":
            entry["connector"] = value["connector"]
    return view


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect status", description=__doc__)
    parser.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS (other KAFKA_* variables apply too)")
    parser.add_argument("--topic", default=os.environ.get("STATUS_TOPIC", "connect-status"))
    parser.add_argument("--json", action="store_true", help="Kafka Connect's `?expand=status` shape")
    args = parser.parse_args(argv)
    statuses = read_statuses(args.bootstrap, args.topic)
    failed = any(task["state"] == "FAILED" for value in statuses.values() for task in value["tasks"])
    if args.json:
        print(json.dumps(expand_status(statuses), indent=2))
        return 1 if failed else 0
    print(f"{'CONNECTOR':<28} {'TYPE':<7} {'TASK':>4} {'STATE':<11} {'SINCE':<20} WORKER / TRACE")
    for value in sorted(statuses.values(), key=lambda v: (v["name"], v["tasks"][0]["id"])):
        for task in value["tasks"]:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value.get("updated", 0) / 1000))
            print(f"{value['name']:<28} {value['type']:<7} {task['id']:>4} {task['state']:<11} {since:<20} "
                  f"{task['worker_id']}")
            if task.get("trace"):
                print(f"{'':<74}{task['trace']}")
    if not statuses:
        print("(no connector has reported yet)")
    return 1 if failed else 0
