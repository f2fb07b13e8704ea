"""`labconnect status`: one view of every connector's tasks, read from the compacted
status topic every task writes its state changes and heartbeats to.

A task whose last heartbeat is older than three of its heartbeat intervals shows as LOST:
its process died without saying so (SIGKILL, a lost machine, a network partition). A
process that exits says so (``exited``) and keeps its last state. The view also shows how
far each sink's consumer group is behind (:mod:`common.group_lag`), and ``--forget`` writes
tombstones for a connector that no longer exists.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from common.config import client_properties
from common.group_lag import GroupLag, group_lag
from common.kafka_clients import TOOL_LOG, require_reachable
from common.topic_reader import ReadTimedOut, read_to_end

LOST = "LOST"
MISSED_HEARTBEATS = 3  # a task is LOST after this many heartbeat intervals without one
_GONE_STATES = ("FAILED", "STOPPED")  # without heartbeats (an older version's value): not alive in these


def default_topic() -> str:
    return os.environ.get("STATUS_TOPIC", "connect-status")


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
        assignment = [TopicPartition(topic, partition, 0) for partition in metadata.partitions]
        try:
            for batch in read_to_end(consumer, assignment, timeout=timeout):
                for message in batch:
                    key = (message.key() or b"").decode()
                    if message.value() is None:
                        statuses.pop(key, None)
                    else:
                        statuses[key] = json.loads(message.value())
        except ReadTimedOut:
            pass  # a slow broker: the view shows what was read in time
    finally:
        consumer.close()
    return statuses


@dataclass(frozen=True)
class TaskInstance:
    """One task as its last status value shows it."""

    connector: str
    task_id: int
    kind: str
    state: str  # as the task reported it
    worker_id: str
    heartbeat_ms: int | None  # None: written by a version without heartbeats
    heartbeat_interval_ms: int | None
    exited: bool

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> TaskInstance:
        task = value["tasks"][0]
        return cls(value["name"], int(task["id"]), value.get("type", ""), task["state"], task.get("worker_id", ""),
                   value.get("heartbeat"), value.get("heartbeat_interval_ms"), bool(value.get("exited", False)))

    def lost(self, now_ms: int) -> bool:
        """The process stopped heartbeating without saying it exits."""
        if self.exited or self.heartbeat_ms is None or not self.heartbeat_interval_ms:
            return False
        return now_ms - self.heartbeat_ms > MISSED_HEARTBEATS * self.heartbeat_interval_ms

    def live(self, now_ms: int) -> bool:
        """Its process is running (whatever the task's state: a PAUSED or STOPPED task may resume)."""
        if self.exited:
            return False
        if self.heartbeat_ms is None:
            return self.state not in _GONE_STATES
        return not self.lost(now_ms)

    def shown_state(self, now_ms: int) -> str:
        return LOST if self.lost(now_ms) else self.state


def _now_ms() -> int:
    return int(time.time() * 1000)


def task_instances(statuses: dict[str, dict[str, Any]]) -> list[TaskInstance]:
    return sorted((TaskInstance.from_value(value) for value in statuses.values()),
                  key=lambda t: (t.connector, t.task_id))


def live_instances(connector: str, bootstrap: str | None = None, topic: str | None = None,
                   statuses: dict[str, dict[str, Any]] | None = None, now_ms: int | None = None) -> list[TaskInstance]:
    """The tasks of ``connector`` whose process is alive (a heartbeat within three intervals,
    not exited), read from the status topic unless ``statuses`` are given. Empty: no instance
    of it runs anywhere, e.g. it is safe to move its offsets."""
    if statuses is None:
        statuses = read_statuses(bootstrap, topic or default_topic())
    now = _now_ms() if now_ms is None else now_ms
    return [task for task in task_instances(statuses) if task.connector == connector and task.live(now)]


def unhealthy(statuses: dict[str, dict[str, Any]], now_ms: int | None = None) -> bool:
    """A task is FAILED or LOST: ``labconnect status`` exits 1."""
    now = _now_ms() if now_ms is None else now_ms
    return any(task.shown_state(now) in ("FAILED", LOST) for task in task_instances(statuses))


def expand_status(statuses: dict[str, dict[str, Any]], now_ms: int | None = None,
                  lags: dict[str, GroupLag] | None = None) -> dict[str, dict[str, Any]]:
    """Kafka Connect's ``GET /connectors?expand=status``: per connector, every task's status.

    Each task reports its own view of the connector; the connector shows FAILED if any task's
    view says so, LOST if every task is LOST, else the view of its lowest task. A LOST task keeps
    what it last reported in ``reported_state``. A sink's entry has ``lag`` (its group's)."""
    now = _now_ms() if now_ms is None else now_ms
    view: dict[str, dict[str, Any]] = {}
    for value in sorted(statuses.values(), key=lambda v: (v["name"], v["tasks"][0]["id"])):
        instance = TaskInstance.from_value(value)
        entry = view.setdefault(value["name"], {"status": {
            "name": value["name"], "connector": value["connector"], "tasks": [], "type": value["type"],
            "updated": value.get("updated", 0)}})["status"]
        for task in value["tasks"]:
            task = {**task, "heartbeat": instance.heartbeat_ms}
            if instance.lost(now):
                task.update(state=LOST, reported_state=instance.state)
            entry["tasks"].append(task)
        entry["updated"] = max(entry["updated"], value.get("updated", 0))
        if value["connector"]["state"] == "FAILED":
            entry["connector"] = value["connector"]
    for name, entry in ((name, v["status"]) for name, v in view.items()):
        if entry["connector"]["state"] != "FAILED" and all(t["state"] == LOST for t in entry["tasks"]):
            entry["connector"] = {**entry["connector"], "state": LOST}
        lag = (lags or {}).get(name)
        if lag is not None:
            entry["lag"] = {"group": lag.group, "total": lag.total, "error": lag.error,
                            "partitions": [{"topic": t, "partition": p, "lag": n}
                                           for (t, p), n in sorted(lag.partitions.items())]}
    return view


def sink_lags(bootstrap: str | None, statuses: dict[str, dict[str, Any]]) -> dict[str, GroupLag]:
    """Lag of every sink connector's consumer group (``connect-<name>``)."""
    from confluent_kafka.admin import AdminClient

    sinks = sorted({value["name"] for value in statuses.values() if value.get("type") == "sink"})
    if not sinks:
        return {}
    client = {**client_properties(bootstrap), "logger": TOOL_LOG}
    admin = AdminClient(client)
    return {name: group_lag(admin, f"connect-{name}", client) for name in sinks}


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((ms or 0) / 1000))


def render_table(statuses: dict[str, dict[str, Any]], lags: dict[str, GroupLag], now_ms: int) -> str:
    """One line per task; a sink's lag (records its group has not committed yet, summed over its
    partitions) on its first line. SINCE is when the state began, for LOST the last heartbeat."""
    lines = [f"{'CONNECTOR':<28} {'TYPE':<7} {'TASK':>4} {'STATE':<11} {'SINCE':<20} {'LAG':>9} WORKER / TRACE"]
    shown_lag: set[str] = set()
    for value in sorted(statuses.values(), key=lambda v: (v["name"], v["tasks"][0]["id"])):
        instance = TaskInstance.from_value(value)
        name = value["name"]
        lag = ""
        if name in lags and name not in shown_lag:
            shown_lag.add(name)
            total = lags[name].total
            lag = "n/a" if total is None else str(total)
        for task in value["tasks"]:
            lost = instance.lost(now_ms)
            state = LOST if lost else task["state"]
            since = _when(instance.heartbeat_ms if lost else value.get("updated", 0))
            lines.append(f"{name:<28} {value['type']:<7} {task['id']:>4} {state:<11} {since:<20} {lag:>9} "
                         f"{task['worker_id']}")
            if lost:
                lines.append(f"{'':<84}no heartbeat since {since} (last reported {task['state']})")
            if task.get("trace"):
                lines.append(f"{'':<84}{task['trace']}")
    if not statuses:
        lines.append("(no connector has reported yet)")
    for name, group in sorted(lags.items()):
        if group.error:
            lines.append(f"lag of {name} unknown: {group.error}")
    return "\n".join(lines)


def forget(bootstrap: str | None, topic: str, connector: str) -> int:
    """Tombstone every status entry of ``connector``; refused while an instance of it is alive."""
    statuses = read_statuses(bootstrap, topic)
    keys = sorted(key for key, value in statuses.items() if value["name"] == connector)
    if not keys:
        known = ", ".join(sorted({value["name"] for value in statuses.values()})) or "none"
        print(f"labconnect status: no status of a connector named {connector} (known: {known})", file=sys.stderr)
        return 1
    live = live_instances(connector, statuses=statuses)
    if live:
        tasks = ", ".join(f"task {task.task_id} on {task.worker_id} ({task.state})" for task in live)
        print(f"labconnect status: {connector} is still running ({tasks}); stop it before forgetting it",
              file=sys.stderr)
        return 1
    producer = Producer({**client_properties(bootstrap), "logger": TOOL_LOG, "linger.ms": 0})
    for key in keys:
        producer.produce(topic, key=key, value=None)
    if producer.flush(30):
        print(f"labconnect status: could not write to {topic} in 30s; nothing forgotten for sure", file=sys.stderr)
        return 1
    print(f"forgot {connector}: {len(keys)} task {'entry' if len(keys) == 1 else 'entries'} removed from {topic}")
    return 0


def _show(args: argparse.Namespace) -> int:
    statuses = read_statuses(args.bootstrap, args.topic)
    lags = sink_lags(args.bootstrap, statuses)
    now = _now_ms()
    if args.json:
        print(json.dumps(expand_status(statuses, now, lags), indent=2))
    else:
        print(render_table(statuses, lags, now))
    return 1 if unhealthy(statuses, now) else 0


def _watch(args: argparse.Namespace) -> int:
    from common.errors import ConnectorError

    # Ctrl-C (or SIGTERM) ends the watch between frames: raised inside a Kafka client call or
    # one of its callbacks, KeyboardInterrupt could leave the client unable to close.
    stopped: list[int] = []
    handlers = {sig: signal.signal(sig, lambda number, _frame: stopped.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while not stopped:
            try:
                statuses = read_statuses(args.bootstrap, args.topic)
                frame = render_table(statuses, sink_lags(args.bootstrap, statuses), _now_ms())
            except ConnectorError as error:  # the broker went away: say so and keep watching
                frame = f"labconnect: {error}"
            print(f"{clear}{time.strftime('%H:%M:%S')}  every {args.watch:g}s, Ctrl-C to stop\n{frame}\n", flush=True)
            next_frame = time.monotonic() + args.watch
            while not stopped and time.monotonic() < next_frame:
                time.sleep(min(0.1, args.watch))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Exit code: 0 all well, 1 a task is FAILED or LOST (or the "
                                     "cluster cannot be reached), 2 bad usage.")
    parser.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS (other KAFKA_* variables apply too)")
    parser.add_argument("--topic", default=default_topic(), help="default: STATUS_TOPIC or connect-status")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="Kafka Connect's `?expand=status` shape, with lag")
    mode.add_argument("--watch", nargs="?", type=_seconds, const=2.0, metavar="SECONDS",
                      help="redraw the view every SECONDS (default 2) until Ctrl-C")
    mode.add_argument("--forget", metavar="CONNECTOR",
                      help="remove a connector that no longer exists from the status topic (refused while it runs)")
    args = parser.parse_args(argv)
    if args.forget:
        return forget(args.bootstrap, args.topic, args.forget)
    if args.watch:
        return _watch(args)
    return _show(args)
