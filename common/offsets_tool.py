"""`labconnect offsets get|reset <connector>`: where a connector resumes, and moving it
(Kafka Connect's KIP-875, from the command line).

Run with the connector's own environment (its ``CONNECTOR_NAME``, ``TOPICS``, database URL
and ``KAFKA_*`` settings): the tool reads the same configuration the connector does.

* A sink resumes from its consumer group ``connect-<name>``, or, for a sink that keeps its
  offsets in its own database (sink-billing, sink-notify), from the offsets stored there.
  A reset moves both, for every partition of its topics: ``--to-earliest`` and
  ``--to-latest`` to the start or end of each partition, ``--to-datetime`` to the first
  record whose Kafka timestamp is at or after the time (the end where there is none).
* A source resumes from its source offsets on the offsets topic; what a reset means for
  each source partition is the connector's to say (README: "Offsets").

A reset is refused (exit 1) while an instance of the connector runs: a task that is not
STOPPED has a live process (its heartbeat in the status topic is fresh:
:func:`common.status_view.live_instances`) or, for a sink, its group keeps members longer than
``--wait`` after every instance stopped (a static member stays until its session times
out). Stop it first (SIGTERM, or ``PUT /connectors/<name>/stop``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, IsolationLevel, KafkaException, Producer, \
    TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from common.config import SinkSettings, SourceSettings, WorkerSettings, load_settings
from common.connector import REGISTRY, ConnectorSpec, load_connector
from common.errors import ConfigError, ConnectorError
from common.kafka_clients import TOOL_LOG, require_reachable
from common.offset_reset import ResetTarget, SourceOffsetChange
from common._source_worker import offset_key, read_source_offsets

TIMEOUT_S = 30.0


class ResetRefused(ConnectorError):
    """The connector runs: moving its offsets under it would be overwritten or half applied."""


def parse_datetime(text: str) -> int:
    """An ISO 8601 instant as epoch ms; a time without a zone is refused (ambiguous)."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError([f"--to-datetime: {text!r} is not an ISO 8601 time (2026-03-01T08:00:00Z)"]) from None
    if parsed.tzinfo is None:
        raise ConfigError([f"--to-datetime: {text!r} has no time zone (add Z or +01:00)"])
    return int(parsed.timestamp() * 1000)


def _target(args: argparse.Namespace) -> ResetTarget:
    if args.to_earliest:
        return ResetTarget("earliest")
    if args.to_latest:
        return ResetTarget("latest")
    return ResetTarget("datetime", parse_datetime(args.to_datetime))


def active_tasks(name: str, settings: WorkerSettings) -> list[str]:
    """Tasks of ``name`` that may still move its offsets: in a live process (fresh heartbeats in
    the status topic), and not STOPPED (a stopped task reads its offsets again when resumed)."""
    from common.status_view import live_instances

    return [f"task {task.task_id} {task.state}" for task in
            live_instances(name, settings.kafka_bootstrap_servers, settings.status_topic) if task.state != "STOPPED"]


def _result(futures: Any) -> Any:
    """The single result of an AdminClient call answering one future per request."""
    (future,) = futures.values()
    return future.result()


# ------------------------------------------------------------------------------------ sinks
class SinkOffsets:
    """A sink connector's positions: its consumer group and, if it keeps them, its own store."""

    def __init__(self, spec: ConnectorSpec, settings: SinkSettings, name: str) -> None:
        self.spec, self.settings, self.name = spec, settings, name
        self.group = f"connect-{name}"
        kafka = {k: v for k, v in settings.kafka_properties().items() if not k.startswith("group.")}
        kafka["logger"] = TOOL_LOG
        require_reachable(kafka)
        self.admin = AdminClient(kafka)
        # Reads the group's committed offsets without joining it. (AdminClient's
        # list_consumer_group_offsets crashes the process while a new cluster's group
        # coordinator is still loading; OffsetFetch through a consumer waits for it.)
        self.reader = Consumer({**kafka, "group.id": self.group, "enable.auto.commit": False})
        self.store = spec.offset_store(settings) if spec.offset_store is not None else None

    def close(self) -> None:
        self.reader.close()
        if self.store is not None:
            self.store.close()

    def partitions(self) -> list[TopicPartition]:
        found = []
        for topic in self.settings.topic_list:
            metadata = self.admin.list_topics(topic, timeout=TIMEOUT_S).topics[topic]
            if metadata.error is not None:
                raise ConnectorError(f"topic {topic}: {metadata.error.str()}")
            found += [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        return found

    def members(self) -> int:
        description = _result(self.admin.describe_consumer_groups([self.group], request_timeout=TIMEOUT_S))
        return len(description.members)

    def committed(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        found = self.reader.committed(partitions, timeout=TIMEOUT_S)
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def list_offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        futures = self.admin.list_offsets({tp: spec for tp in partitions},
                                          isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=TIMEOUT_S)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

    def targets(self, partitions: list[TopicPartition], target: ResetTarget) -> dict[tuple[str, int], int]:
        if target.kind == "earliest":
            return self.list_offsets(partitions, OffsetSpec.earliest())
        ends = self.list_offsets(partitions, OffsetSpec.latest())
        if target.kind == "latest":
            return ends
        found = self.list_offsets(partitions, OffsetSpec.for_timestamp(target.at_ms))
        # No record at or after the time: the partition's end.
        return {tp: offset if offset >= 0 else ends[tp] for tp, offset in found.items()}

    def _require_stopped(self, wait_s: float) -> None:
        # Finds the group's coordinator first: describe_consumer_groups only times out while a new
        # cluster's coordinator is loading.
        self.committed(self.partitions())
        members = self.members()
        if not members:
            return
        live = active_tasks(self.name, self.settings)
        if live:
            raise ResetRefused(f"{self.name} is running ({', '.join(live)}; consumer group {self.group} has "
                               f"{members} member(s)); stop it first")
        # No instance runs, yet the group has members: a static member (group.instance.id) does not
        # leave the group when it closes; the broker drops it after its session.timeout.ms.
        print(f"waiting up to {wait_s:.0f}s for {members} member(s) of {self.group} to expire (a stopped "
              "instance stays a member until its session times out)", file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait_s
        while members and time.monotonic() < deadline:
            time.sleep(1.0)
            members = self.members()
        if members:
            raise ResetRefused(f"consumer group {self.group} still has {members} member(s) after {wait_s:.0f}s, "
                               f"though no instance of {self.name} reports running: is one running elsewhere?")

    def get(self) -> list[dict[str, Any]]:
        partitions = self.partitions()
        group = self.committed(partitions)
        stored = self.store.read(self.settings.topic_list) if self.store is not None else {}
        ends = self.list_offsets(partitions, OffsetSpec.latest())
        rows = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            resumes = stored.get(key, group.get(key))
            rows.append({"topic": tp.topic, "partition": tp.partition, "group": group.get(key),
                         "store": stored.get(key), "end": ends[key],
                         "lag": None if resumes is None else max(0, ends[key] - resumes)})
        return rows

    def reset(self, target: ResetTarget, dry_run: bool, wait_s: float) -> dict[tuple[str, int], int]:
        self._require_stopped(wait_s)
        moved = self.targets(self.partitions(), target)
        if dry_run:
            return moved
        if self.store is not None:  # where the task resumes from: first, so a failure below is harmless
            self.store.write(moved)
        request = ConsumerGroupTopicPartitions(
            self.group, [TopicPartition(topic, partition, offset) for (topic, partition), offset in moved.items()])
        try:
            _result(self.admin.alter_consumer_group_offsets([request], request_timeout=TIMEOUT_S))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            raise ConnectorError(f"consumer group {self.group}: {getattr(error, 'str', lambda: str(error))()} "
                                 f"(was an instance started meanwhile?)") from None
        return moved


def _sink_get(offsets: SinkOffsets, as_json: bool) -> None:
    rows = offsets.get()
    if as_json:
        print(json.dumps({"connector": offsets.name, "group": offsets.group, "partitions": rows}, indent=2))
        return
    store = "STORE" if offsets.store is not None else ""
    print(f"{'TOPIC':<32} {'PART':>4} {'GROUP':>10} {store:>10} {'END':>10} {'LAG':>8}")
    for row in rows:
        cells = ["-" if row[k] is None else str(row[k]) for k in ("group", "store", "end", "lag")]
        print(f"{row['topic']:<32} {row['partition']:>4} {cells[0]:>10} "
              f"{cells[1] if offsets.store is not None else '':>10} {cells[2]:>10} {cells[3]:>8}")
    where = "its database's offsets (STORE), where it has them" if offsets.store is not None else "GROUP"
    print(f"({offsets.name} resumes from {where}; consumer group {offsets.group})")


def _sink_reset(offsets: SinkOffsets, target: ResetTarget, dry_run: bool, wait_s: float) -> None:
    moved = offsets.reset(target, dry_run, wait_s)
    for (topic, partition), offset in sorted(moved.items()):
        print(f"{topic}[{partition}] -> {offset}")
    places = f"consumer group {offsets.group}" + (" and the connector's stored offsets" if offsets.store else "")
    verb = "would move" if dry_run else "moved"
    print(f"{verb} {len(moved)} partitions of {offsets.name} to {target.describe()} ({places})")


# ---------------------------------------------------------------------------------- sources
class SourceOffsets:
    """A source connector's source offsets on the offsets topic."""

    def __init__(self, spec: ConnectorSpec, settings: SourceSettings, name: str) -> None:
        self.spec, self.settings, self.name = spec, settings, name
        self.kafka = {**settings.kafka_properties(), "logger": TOOL_LOG}
        require_reachable(self.kafka)
        self.rules = spec.source_offsets(settings) if spec.source_offsets is not None else None

    def stored(self) -> dict[str, dict[str, Any]]:
        return read_source_offsets(self.kafka, self.settings.offset_storage_topic, self.name, timeout=TIMEOUT_S)

    def describe(self, partition: dict[str, Any], offset: dict[str, Any]) -> str:
        return self.rules.describe(partition, offset) if self.rules is not None else json.dumps(offset)

    def changes(self, target: ResetTarget) -> list[tuple[dict[str, Any], SourceOffsetChange]]:
        stored = self.stored()
        partitions = {key: json.loads(key) for key in stored}
        for partition in (self.rules.known_partitions() if self.rules is not None else []):
            partitions.setdefault(json.dumps(partition, separators=(",", ":"), sort_keys=True), partition)
        changes = []
        for key, partition in sorted(partitions.items()):
            if self.rules is not None:
                changes.append((partition, self.rules.reset(partition, stored.get(key), target)))
            elif target.kind == "earliest":
                changes.append((partition, SourceOffsetChange(None)))
            else:
                raise ConfigError([f"{self.spec.name} defines only --to-earliest for its source offsets"])
        return changes

    def reset(self, target: ResetTarget, dry_run: bool) -> list[tuple[dict[str, Any], SourceOffsetChange]]:
        live = active_tasks(self.name, self.settings)
        if live:
            raise ResetRefused(f"{self.name} is running ({', '.join(live)} in {self.settings.status_topic}); "
                               "stop it first")
        changes = self.changes(target)
        if dry_run:
            return changes
        # The workers' partitioner: a key's new value must land on the partition holding its old
        # one, or a reader of the offsets topic may see them in either order.
        producer = Producer({**self.kafka, "enable.idempotence": True, "partitioner": "murmur2_random"})
        errors: list[str] = []
        for partition, change in changes:
            if change.keep:
                continue
            value = None if change.offset is None else \
                json.dumps(change.offset, separators=(",", ":"), sort_keys=True).encode()
            producer.produce(self.settings.offset_storage_topic, key=offset_key(self.name, partition), value=value,
                             on_delivery=lambda err, _msg: errors.append(err.str()) if err else None)
        if producer.flush(TIMEOUT_S) or errors:
            raise ConnectorError(f"writing to {self.settings.offset_storage_topic} failed: "
                                 f"{errors[0] if errors else 'timed out'}")
        return changes


def _source_get(offsets: SourceOffsets, as_json: bool) -> None:
    stored = offsets.stored()
    if as_json:
        print(json.dumps({"connector": offsets.name, "offsets": [
            {"partition": json.loads(key), "offset": value} for key, value in sorted(stored.items())]}, indent=2))
        return
    for key, value in sorted(stored.items()):
        print(f"{key}  {offsets.describe(json.loads(key), value)}")
    print(f"({len(stored)} source partitions of {offsets.name} in {offsets.settings.offset_storage_topic})")


def _source_reset(offsets: SourceOffsets, target: ResetTarget, dry_run: bool) -> None:
    changes = offsets.reset(target, dry_run)
    for partition, change in changes:
        text = json.dumps(partition, separators=(",", ":"), sort_keys=True)
        if change.keep:
            print(f"{text}  unchanged: {change.note}")
        elif change.offset is None:
            print(f"{text}  removed (the task starts it as new)")
        else:
            print(f"{text}  -> {offsets.describe(partition, change.offset)}")
    moved = sum(1 for _, change in changes if not change.keep)
    print(f"{'would reset' if dry_run else 'reset'} {moved} source partitions of {offsets.name} "
          f"to {target.describe()}")


# ------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labconnect offsets", description=__doc__.split("\n\n")[0],
                                     epilog="Run with the connector's environment; README: \"Offsets\".")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = actions.add_parser("get", help="show where the connector resumes")
    reset = actions.add_parser("reset", help="move where the connector resumes (refused while it runs)")
    for command in (get, reset):
        command.add_argument("connector", choices=sorted(REGISTRY), help="the connector's type")
        command.add_argument("--name", help="the connector's name (default: CONNECTOR_NAME, else its type)")
    get.add_argument("--json", action="store_true")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the start of every partition")
    to.add_argument("--to-latest", action="store_true", help="the end of every partition (skip what is there)")
    to.add_argument("--to-datetime", metavar="ISO", help="the first record at or after this time (with a zone)")
    reset.add_argument("--dry-run", action="store_true", help="print the new positions, change nothing")
    reset.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                       help="sinks: how long to wait for a stopped instance's group membership to expire")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    target = _target(args) if args.action == "reset" else None  # a bad time is an error before anything else
    spec = load_connector(args.connector)
    settings: WorkerSettings = load_settings(spec.settings)
    name = args.name or settings.connector_name or spec.name
    if spec.kind == "sink":
        assert isinstance(settings, SinkSettings)
        offsets = SinkOffsets(spec, settings, name)
        try:
            if target is None:
                _sink_get(offsets, args.json)
            else:
                _sink_reset(offsets, target, args.dry_run, args.wait)
        finally:
            offsets.close()
        return 0
    assert isinstance(settings, SourceSettings)
    sources = SourceOffsets(spec, settings, name)
    if target is None:
        _source_get(sources, args.json)
    else:
        _source_reset(sources, target, args.dry_run)
    return 0
