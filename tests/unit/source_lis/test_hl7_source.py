"""The HL7 mode end to end in-process: ACK after commit, AR/AE, de-duplication, restart, replay."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask
from connectors.source_lis.window import ReplayWindow
from devstack.lis_simulator import MllpSender
from tests.unit.source_lis.fake_runtime import FakeRuntime
from tests.unit.source_lis.hl7_samples import oru

T0 = 1_767_225_600_000


def make_task(tmp_path: Path, replay: ReplayWindow | None = None, **overrides: Any) -> LisSourceTask:
    values: dict[str, Any] = dict(lis_mode="hl7-mllp", mllp_port=0, hl7_archive_dir=str(tmp_path / "archive"))
    values.update(overrides)
    return LisSourceTask(LisSettings(**values), replay=replay)


class Sender:
    """Sends in a background thread (the task is polled in the test's thread)."""

    def __init__(self, port: int, encoding: str = "utf-8") -> None:
        self.sender = MllpSender("127.0.0.1", port, encoding=encoding, timeout_s=10)
        self.thread: threading.Thread | None = None
        self.code: str | None = None

    def send(self, control: str, text: str) -> Sender:
        def run() -> None:
            self.code = self.sender.send(control, text)

        self.thread = threading.Thread(target=run)
        self.thread.start()
        return self

    def ack(self) -> str | None:
        assert self.thread is not None
        self.thread.join(10)
        return self.code


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[FakeRuntime, int]]:
    runtime = FakeRuntime(make_task(tmp_path)).start()
    yield runtime, runtime.task.source.mllp_port  # type: ignore[attr-defined]
    runtime.task.stop()


def step_until_batch(runtime: FakeRuntime, abort: bool = False) -> list:
    for _ in range(40):
        batch = runtime.step(abort=abort)
        if batch:
            return batch
    raise AssertionError("nothing arrived")


def test_aa_is_sent_only_after_the_batch_is_committed(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    sender = Sender(port).send("MSG001", oru())
    batch = list(runtime.task.poll())  # polled but not committed yet
    assert batch
    sender.thread.join(0.3)
    assert sender.code is None
    runtime.task.on_committed(batch)
    assert sender.ack() == "AA"


def test_resent_message_is_acknowledged_without_new_events(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    first = Sender(port).send("MSG001", oru())
    step_until_batch(runtime)
    assert first.ack() == "AA"
    produced = len(runtime.records)
    again = Sender(port).send("MSG001", oru())
    for _ in range(10):
        runtime.step()
        if again.code:
            break
    assert again.ack() == "AA"
    assert len(runtime.records) == produced


def test_duplicate_in_the_same_batch_is_written_once(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    s = MllpSender("127.0.0.1", port)
    sock = s._connect()
    data = b"\x0b" + oru("DUP1").encode() + b"\x1c\x0d"
    sock.sendall(data + data)
    step_until_batch(runtime)
    assert [s._read_ack(), s._read_ack()] == ["AA", "AA"]
    assert len(runtime.event_ids()) == 6
    s.close()


def test_malformed_message_goes_to_the_dlq_and_gets_ar(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    sender = Sender(port).send("X", "MSH|^~\\&|LIS|MAINLAB|A|B|20260101||ADT^A01|ADT7|P|2.5.1\rPID|1\r")
    step_until_batch(runtime)
    assert sender.ack() == "AR"
    assert len(runtime.dead) == 1 and not runtime.records
    dead = runtime.dead[0]
    assert dead.key == b"ADT7" and ("lis.message_id", b"ADT7") in dead.headers


def test_unmappable_content_goes_to_the_dlq_and_gets_ae_without_phi(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    sender = Sender(port).send("BAD", oru("BAD1", pid3="999-00-0000^^^SSA^SS"))
    step_until_batch(runtime)
    assert sender.ack() == "AE"
    text = str(runtime.dead[0].error) + repr(runtime.dead[0].headers)
    assert "BAD1" in text
    for phi in ("Brien", "555", "chloe", "999-00"):
        assert phi not in text


def test_aborted_batch_answers_ae_and_the_resend_is_processed(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    sender = Sender(port).send("MSG9", oru("MSG9"))
    step_until_batch(runtime, abort=True)
    assert sender.ack() == "AE"
    resend = Sender(port).send("MSG9", oru("MSG9"))
    step_until_batch(runtime)
    assert resend.ack() == "AA"
    assert len(runtime.event_ids()) == 6
    assert runtime.records[0].topic == "patients"  # the aborted contact is sent again


def test_seen_control_ids_survive_a_restart(tmp_path: Path) -> None:
    first = FakeRuntime(make_task(tmp_path)).start()
    port = first.task.source.mllp_port  # type: ignore[attr-defined]
    sender = Sender(port).send("R1", oru("R1"))
    step_until_batch(first)
    assert sender.ack() == "AA"
    first.task.stop()
    assert first.offsets == {'{"lis":"lis","sender":"LIS|MAINLAB"}': {"recent": ["R1"]}}
    second = FakeRuntime(make_task(tmp_path), offsets=first.offsets).start()
    port = second.task.source.mllp_port  # type: ignore[attr-defined]
    again = Sender(port).send("R1", oru("R1"))
    for _ in range(20):
        second.step()
        if again.code:
            break
    assert again.ack() == "AA" and not second.records
    # Another sender may reuse the same control id: it is a different message.
    other = Sender(port).send("R1", oru("R1", app="LIS2"))
    step_until_batch(second)
    assert other.ack() == "AA" and len(second.event_ids()) == 6
    second.task.stop()


def test_dedup_window_is_bounded(tmp_path: Path) -> None:
    runtime = FakeRuntime(make_task(tmp_path, hl7_dedup_window=3)).start()
    s = MllpSender("127.0.0.1", runtime.task.source.mllp_port)  # type: ignore[attr-defined]
    for i in range(5):
        t = threading.Thread(target=s.send, args=(f"B{i}", oru(f"B{i}")))
        t.start()
        step_until_batch(runtime)
        t.join(10)
    assert list(runtime.offsets.values())[-1] == {"recent": ["B2", "B3", "B4"]}
    s.close()
    runtime.task.stop()


def test_configured_encoding_is_used(tmp_path: Path) -> None:
    runtime = FakeRuntime(make_task(tmp_path, hl7_encoding="latin-1")).start()
    sender = Sender(runtime.task.source.mllp_port, encoding="latin-1").send("L1", oru("L1"))  # type: ignore[attr-defined]
    step_until_batch(runtime)
    assert sender.ack() == "AA" and runtime.records
    runtime.task.stop()


def test_archive_replay_produces_the_same_ids_with_a_replay_header(tmp_path: Path) -> None:
    live = FakeRuntime(make_task(tmp_path)).start()
    port = live.task.source.mllp_port  # type: ignore[attr-defined]
    for control in ("A1", "A2", "A1"):  # one re-send: archived twice, replayed once
        sender = Sender(port).send(control, oru(control, app="LIS" if control == "A1" else "LIS3"))
        for _ in range(20):
            live.step()
            if sender.code:
                break
        assert sender.ack() == "AA"
    live.task.stop()
    import time

    window = ReplayWindow(T0, int(time.time() * 1000) + 60_000)
    replay = FakeRuntime(make_task(tmp_path, replay=window, hl7_max_batch=1)).start()
    for _ in range(10):
        replay.step()
        if replay.task.done():
            break
    assert replay.task.done()
    assert sorted(replay.event_ids()) == sorted(live.event_ids())
    assert all(("replay", b"true") in r.headers for r in replay.records)
    assert set(replay.offsets) == {'{"archive":"hl7","lis":"lis"}'}


def _replay(tmp_path: Path, topics: frozenset[str] | None = None) -> FakeRuntime:
    import time

    window = ReplayWindow(T0, int(time.time() * 1000) + 60_000, topics)
    replay = FakeRuntime(make_task(tmp_path, replay=window)).start()
    for _ in range(10):
        replay.step()
        if replay.task.done():
            break
    assert replay.task.done()
    return replay


def test_invalid_time_offset_is_dead_lettered_with_ae_and_intake_goes_on(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    sender = Sender(port).send("TZ1", oru("TZ1").replace("+0000", "+2500"))  # no usable MSH-7 / OBR-22
    step_until_batch(runtime)
    assert sender.ack() == "AE"
    assert len(runtime.dead) == 1 and "TZ1" in str(runtime.dead[0].error)
    good = Sender(port).send("TZ2", oru("TZ2"))
    step_until_batch(runtime)
    assert good.ack() == "AA" and len(runtime.event_ids()) == 6


def test_unexpected_mapping_failure_is_dead_lettered_with_ae_without_phi(  # type: ignore[no-untyped-def]
        live, monkeypatch) -> None:
    runtime, port = live
    source = runtime.task.source

    def broken(*args: Any, **kwargs: Any) -> list:
        raise ValueError("bad value 6.1 for O'Brien +15550001111")

    monkeypatch.setattr(source.mapper, "map", broken)
    sender = Sender(port).send("UX1", oru("UX1"))
    step_until_batch(runtime)
    assert sender.ack() == "AE"
    error = runtime.dead[0].error
    assert "UX1" in str(error) and "ValueError" in str(error)
    for phi in ("6.1", "Brien", "555"):
        assert phi not in str(error)
    monkeypatch.undo()
    good = Sender(port).send("UX2", oru("UX2"))
    step_until_batch(runtime)
    assert good.ack() == "AA"


def test_unexpected_parser_failure_is_dead_lettered_with_ae(live, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live

    def broken(text: str) -> None:
        raise IndexError("segment O'Brien")

    monkeypatch.setattr("connectors.source_lis.hl7_source.parse_oru", broken)
    sender = Sender(port).send("PX1", oru("PX1"))
    step_until_batch(runtime)
    assert sender.ack() == "AE"
    assert runtime.dead[0].key == b"PX1" and "Brien" not in str(runtime.dead[0].error)


def test_undecodable_message_gets_an_ar_that_names_its_control_id(live) -> None:  # type: ignore[no-untyped-def]
    runtime, port = live
    s = MllpSender("127.0.0.1", port)
    sock = s._connect()
    sock.sendall(b"\x0b" + oru("ENC1").encode("latin-1") + b"\x1c\x0d")  # "Chloé" in latin-1, not UTF-8
    step_until_batch(runtime)
    while b"\x1c\x0d" not in s.buffer:
        s.buffer += sock.recv(65536)
    msh, msa, err = s.buffer.split(b"\x1c\x0d")[0].lstrip(b"\x0b").decode().strip("\r").split("\r")
    assert msa.split("|")[:3] == ["MSA", "AR", "ENC1"]
    assert err.split("|")[3:5] == ["102^Data type error^HL70357", "E"]
    assert msh.split("|")[2:6] == ["LABCONNECT", "DRDANG", "LIS", "MAINLAB"]
    assert runtime.dead[0].key == b"ENC1" and "ENC1" in str(runtime.dead[0].error)
    s.close()


def test_hl7_replay_leaves_patient_contacts_out_unless_asked(tmp_path: Path) -> None:
    live = FakeRuntime(make_task(tmp_path)).start()
    sender = Sender(live.task.source.mllp_port).send("C1", oru("C1"))  # type: ignore[attr-defined]
    step_until_batch(live)
    assert sender.ack() == "AA" and live.records[0].topic == "patients"
    live.task.stop()
    replay = _replay(tmp_path)
    assert replay.records and "patients" not in {r.topic for r in replay.records}
    assert sorted(replay.event_ids()) == sorted(live.event_ids())
    asked = _replay(tmp_path, frozenset({"patients"}))
    assert [r.topic for r in asked.records] == ["patients"]


def test_a_record_the_runtime_dead_letters_makes_its_message_ae_and_a_resend_is_processed(  # type: ignore[no-untyped-def]
        live) -> None:
    runtime, port = live
    sender = Sender(port).send("MSG001", oru())
    for _ in range(40):
        if runtime.step(unserializable=lambda r: r.topic == "lab-results"):
            break
    assert sender.ack() == "AE"
    assert not [r for r in runtime.records if r.topic == "lab-results"]
    again = Sender(port).send("MSG001", oru())  # not remembered as done: processed again
    step_until_batch(runtime)
    assert again.ack() == "AA"
    assert [r for r in runtime.records if r.topic == "lab-results"]


def _poll_until(task: LisSourceTask) -> list:
    for _ in range(40):
        batch = list(task.poll())
        if batch:
            return batch
    raise AssertionError("nothing arrived")


def test_a_batch_polled_while_the_one_before_commits_is_not_marked_seen_when_it_aborts(  # type: ignore[no-untyped-def]
        live) -> None:
    runtime, port = live
    task = runtime.task
    first = Sender(port).send("IN1", oru("IN1"))
    committing = _poll_until(task)  # its commit is in flight while the next batch is polled
    second = Sender(port).send("IN2", oru("IN2"))
    polled = _poll_until(task)
    task.on_committed(committing)
    assert first.ack() == "AA"
    task.on_aborted(polled, RuntimeError("commit failed"))
    assert second.ack() == "AE"
    resend = Sender(port).send("IN2", oru("IN2"))
    step_until_batch(runtime)
    assert resend.ack() == "AA"
    assert len(runtime.event_ids()) == 6, "the re-send was processed again, not taken for a committed one"


def test_wake_ends_a_poll_waiting_for_messages(live) -> None:  # type: ignore[no-untyped-def]
    import time

    runtime, _ = live
    runtime.task.wake()
    started = time.monotonic()
    assert list(runtime.task.poll()) == []
    assert time.monotonic() - started < 0.1, "returned at once, not after the 0.5 s wait"
