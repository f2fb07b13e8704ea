"""The HL7 mode against the simulator's senders over real TCP: several senders, duplicates,
dropped connections and malformed messages; every report exactly once, the right ACKs."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask
from devstack.lis_simulator import Hl7Faults, Hl7Feed, expected_hl7_event_ids, generate, send_all
from tests.unit.source_lis.fake_runtime import FakeRuntime


def test_three_senders_with_duplicates_drops_and_malformed_messages(tmp_path: Path) -> None:
    task = LisSourceTask(LisSettings(lis_mode="hl7-mllp", mllp_port=0, hl7_archive_dir=str(tmp_path),
                                     hl7_max_batch=50))
    runtime = FakeRuntime(task).start()
    faults = Hl7Faults(duplicate_share=0.1, drop_share=0.1, malformed=6)
    feed = Hl7Feed(generate(seed=21, reports=150), faults=faults, multi_share=0.2)
    messages = feed.messages()
    acks: dict[str, str] = {}
    done = threading.Event()

    def senders() -> None:
        acks.update(send_all("127.0.0.1", task.source.mllp_port, messages, senders=3, faults=faults))
        done.set()

    thread = threading.Thread(target=senders)
    thread.start()
    while not done.is_set():
        runtime.step()
    thread.join(30)
    task.stop()

    counts = Counter(runtime.event_ids())
    assert set(counts) == expected_hl7_event_ids(feed.versions)
    assert max(counts.values()) == 1, "re-sent and duplicated messages are written once"
    bad = {c: code for c, code in acks.items() if c.startswith("BAD")}
    assert sorted(bad.values()) == ["AE", "AE", "AR", "AR", "AR", "AR"]
    assert all(code == "AA" for c, code in acks.items() if not c.startswith("BAD"))
    # A re-sent rejected message is dead-lettered again (rejections are not remembered as "seen").
    assert {d.payload for d in runtime.dead} == {text.encode() for c, text in messages if c.startswith("BAD")}
    contacts = [r for r in runtime.records if r.topic == "patients"]
    assert contacts and all(r.key == r.value["patient_id"] for r in contacts)
    archived = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert all(text.encode() in archived for _, text in messages), "every received message is archived"
