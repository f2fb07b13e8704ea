"""The chaos loop: SIGKILLs a random connector at random moments and restarts it, and plays a
timeline of outages: S3 answering 503, the SMS provider answering 503, one SIGKILL and
restart of the broker, PostgreSQL stopped. A connector that exits on its own is restarted
too, and counted: nothing in the drill should make one give up."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from devstack.drill.stack import CONNECTORS, Stack


@dataclass
class ChaosPlan:
    duration_s: float
    kill_every_s: float  # mean pause between connector kills
    s3_outage_s: float
    sms_errors: int  # 503s the SMS provider answers in a row
    pg_outage_s: float
    seed: int = 1

    @classmethod
    def for_duration(cls, duration_s: float, seed: int = 1, pg_outage_s: float = 30.0) -> ChaosPlan:
        return cls(duration_s, kill_every_s=min(12.0, max(3.0, duration_s / 18)),
                   s3_outage_s=min(30.0, duration_s * 0.2), sms_errors=60, pg_outage_s=pg_outage_s, seed=seed)


@dataclass
class ChaosLog:
    kills: Counter[str] = field(default_factory=Counter)
    own_exits: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    broker_down_s: float = 0.0

    def fault(self, text: str) -> None:
        self.faults.append(text)
        print(f"  chaos: {text}", flush=True)


class ChaosLoop:
    def __init__(self, stack: Stack, plan: ChaosPlan) -> None:
        self.stack, self.plan = stack, plan
        self.rng = random.Random(plan.seed)
        self.log = ChaosLog()
        self.stop_event = threading.Event()
        self._restart_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.started = time.monotonic()
        for target in (self._kill_loop, self._timeline):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        """Stop the chaos and leave every connector running."""
        self.stop_event.set()
        kill_loop, *faults = self._threads
        kill_loop.join(60)
        with self._lock:
            for name in CONNECTORS:
                if self.stack.processes[name].poll() is not None:
                    self._note_exit(name)
                    self.stack.start_connector(name)
            self._restart_at.clear()
        for thread in faults:  # an outage still on ends while everything runs again
            thread.join(300)

    def _at(self, fraction: float) -> bool:
        """Sleep until ``fraction`` of the duration has passed; False if stopped first."""
        target = self.started + self.plan.duration_s * fraction
        return not self.stop_event.wait(max(0.0, target - time.monotonic()))

    def _kill_loop(self) -> None:
        next_kill = self.started + self._pause()
        while not self.stop_event.wait(0.1):
            now = time.monotonic()
            with self._lock:
                self._restart_due()
                if now < next_kill or now - self.started > self.plan.duration_s:
                    continue
                running = [n for n in CONNECTORS if n not in self._restart_at]
                victim = self.rng.choice(running)
                self.stack.kill_connector(victim)
                self.log.kills[victim] += 1
                self._restart_at[victim] = now + self.rng.uniform(0.2, 2.0)
                next_kill = now + self._pause()

    def _pause(self) -> float:
        return self.rng.uniform(0.5, 1.5) * self.plan.kill_every_s

    def _restart_due(self) -> None:
        now = time.monotonic()
        for name in CONNECTORS:
            due = self._restart_at.get(name)
            if due is not None and now >= due:
                self.stack.start_connector(name)
                del self._restart_at[name]
            elif due is None and self.stack.processes[name].poll() is not None:
                self._note_exit(name)
                self.stack.start_connector(name)

    def _note_exit(self, name: str) -> None:
        code = self.stack.processes[name].returncode
        if code not in (None, -9):
            self.log.own_exits[f"{name} (exit {code})"] += 1
            print(f"  chaos: {name} exited on its own with {code}; restarted", flush=True)

    def _timeline(self) -> None:
        plan, stack = self.plan, self.stack
        if not self._at(0.1):
            return
        self._aside(self._s3_outage)
        if not self._at(0.25):
            return
        stack.providers.faults([{"channel": "sms", "status": 503, "count": plan.sms_errors}])
        self.log.fault(f"SMS provider answers 503 to the next {plan.sms_errors} sends")
        if not self._at(0.4):
            return
        # The broker's recovery takes its own time (tens of seconds): the timeline goes on meanwhile.
        self._aside(self._broker_crash)
        if not self._at(0.55):
            return
        stack.postgres.pg_ctl("stop")
        self.log.fault(f"PostgreSQL stopped for {plan.pg_outage_s:.0f}s")
        time.sleep(plan.pg_outage_s)  # the whole outage, even if the drill's duration ends meanwhile
        stack.postgres.pg_ctl("start")
        self.log.fault("PostgreSQL started again")

    def _aside(self, fault: Callable[[], None]) -> None:
        """Play a fault beside the timeline (``finish`` waits for it)."""
        thread = threading.Thread(target=fault, name=fault.__name__, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _broker_crash(self) -> None:
        down = time.monotonic()
        self.stack.kill_broker()
        self.log.fault("broker SIGKILLed")
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.stack.restart_broker()
        self.log.broker_down_s = time.monotonic() - down
        self.log.fault(f"broker restarted after {self.log.broker_down_s:.0f}s down")

    def _s3_outage(self) -> None:
        """503s for the planned time, then on until the warehouse has met a few (at most two
        minutes past the chaos): a warehouse with nothing to write (the broker down) or
        restarting again and again could otherwise sleep through the whole outage."""
        proxy, began = self.stack.s3_proxy, time.monotonic()
        refused_before = proxy.failed
        proxy.fail_for(self.plan.s3_outage_s)
        time.sleep(self.plan.s3_outage_s)
        while proxy.failed - refused_before < 3 and time.monotonic() - self.started < self.plan.duration_s + 120:
            proxy.fail_for(1.0)
            time.sleep(1.0)
        proxy.fail_for(0)
        self.log.fault(f"S3 answered 503 SlowDown for {time.monotonic() - began:.0f}s "
                       f"({proxy.failed - refused_before} requests)")
