"""HL7 v2 mode of the task: MLLP messages in, ACKs out after the Kafka commit.

De-duplication of re-sent messages by (MSH-3, MSH-4, MSH-10): each sender is its
own source partition ``{"lis": <name>, "sender": "<MSH-3>|<MSH-4>"}`` whose offset
holds that sender's most recent ``HL7_DEDUP_WINDOW`` control ids. The offset is
committed in the same transaction as the message's records, so the seen set is
exactly what Kafka holds: it survives restarts, and a message whose batch was
aborted is not marked seen. A re-send of a message still in flight waits for the
original's commit and gets the same ACK. A re-send older than the window is
processed again and produces the same event ids, which the sinks skip.

Replay mode reads the archive instead of listening (partition
``{"lis": <name>, "archive": "hl7"}``, offset = file and byte position). It leaves
PatientContact records out unless the replay's topics name the patients topic: the
archive's contact details and consent are historical, and on the compacted
``patients`` topic they would replace newer ones.

One message's content never fails the task: whatever parsing or mapping raises
sends the message to the DLQ with AR (unparseable) or AE (cannot be processed).
Every AE and AR carries an ERR segment (:mod:`.hl7_ack`). One sender's rejected
messages are counted per peer (:mod:`.peer_rejects`): past the limit they are
answered AR without a dead letter and the connection is closed.

A message larger than a Kafka record can carry (:meth:`LisSettings.kafka_message_limit`)
is refused with AR and dead-lettered as its MSH segment plus headers naming its size;
the original is in the archive when it was received whole (``lis.archive`` points at
the entry), and nowhere when it was over the frame cap.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common import DeadLetter, PermanentError, SourceRecord
from connectors.source_lis.archive import ArchiveReader, ArchiveWriter
from connectors.source_lis.hl7_ack import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    SEGMENT_SEQUENCE_ERROR,
    AckError,
    MessageTooLarge,
    Rejected,
    build_ack,
    check_supported,
    content_condition,
)
from connectors.source_lis.hl7_mapping import Hl7ContentError, Hl7Mapper
from connectors.source_lis.hl7_parser import Header, Hl7Error, parse_oru, read_header
from connectors.source_lis.mllp_framing import HEAD_BYTES
from connectors.source_lis.mllp_server import InboundMessage, MllpLimits, MllpServer
from connectors.source_lis.peer_rejects import PeerRejects
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.window import ReplayWindow

log = logging.getLogger(__name__)
Record = SourceRecord | DeadLetter
_NOT_STORED = AckError(APPLICATION_INTERNAL_ERROR, "not stored, send again")


class _SenderIds:
    """The recent control ids of one sender (bounded), as committed plus this batch's."""

    def __init__(self, ids: list[str], size: int) -> None:
        self.ids: deque[str] = deque(ids, maxlen=size)
        self.set = set(self.ids)
        self.committed = list(self.ids)

    def add(self, control_id: str) -> None:
        if len(self.ids) == self.ids.maxlen:
            self.set.discard(self.ids[0])
        self.ids.append(control_id)
        self.set.add(control_id)

    def commit(self, ids: list[str] | None = None) -> None:
        """``ids``: as they stood after the committed batch (a later batch may be polled already)."""
        self.committed = list(self.ids) if ids is None else ids

    def rollback(self) -> None:
        self.ids = deque(self.committed, maxlen=self.ids.maxlen)
        self.set = set(self.ids)

    def forget(self, control_id: str) -> None:
        """Not seen after all: a re-send of it is processed again."""
        if control_id in self.set:
            self.ids.remove(control_id)
            self.set.discard(control_id)


@dataclass
class _Pending:
    """What to answer once the batch is committed (or aborted)."""

    inbound: InboundMessage | None
    header: Header | None
    code: str  # AA, AE or AR, after the commit
    error: AckError | None = None
    key: tuple[str, str, str] | None = None
    waiters: list[InboundMessage] = field(default_factory=list)
    close: bool = False  # close the connection after this ACK (a peer over its reject limit)


class Hl7Source:
    def __init__(self, settings: LisSettings, mapper_kwargs: dict[str, Any], replay: ReplayWindow | None,
                 headers: list[tuple[str, bytes]]) -> None:
        self.settings = settings
        self.replay = replay
        self.headers = headers
        kwargs = dict(mapper_kwargs)
        self.topic_filter = kwargs.pop("topic_filter", None)
        contacts = replay is None or bool(replay.topics and settings.patients_topic in replay.topics)
        self.mapper = Hl7Mapper(time_zone=settings.hl7_time_zone, emit_contacts=contacts, **kwargs)
        self.inbox: queue.Queue[InboundMessage | None] = queue.Queue()  # None: wake()
        # Larger messages are refused: over the frame cap they were not even kept whole.
        self.max_message_bytes = min(settings.kafka_message_limit(), settings.mllp_frame_cap())
        self.peers = PeerRejects(settings.mllp_peer_max_rejects)
        self.server: MllpServer | None = None
        self.archive: ArchiveWriter | None = None
        self._context_offset: Any = None
        self._senders: dict[str, _SenderIds] = {}
        self._inflight: dict[tuple[str, str, str], _Pending] = {}
        # Records of the batches not yet committed -> their message, to answer AE if the
        # runtime dead-letters one of them (keyed by identity: records are not hashable).
        self._origin: dict[int, tuple[_Pending, _SenderIds, dict[str, Any], str]] = {}
        # Batches handed to the runtime, oldest first: it writes them one at a time, in order,
        # and reports each with on_committed/on_aborted (the batch object may be a copy).
        self._batches: deque[tuple[list[_Pending], list[tuple[_SenderIds, list[str]]]]] = deque()
        self._reader: ArchiveReader | None = None
        self._replay_iter: Any = None
        self._replay_partition = {"lis": settings.lis_name, "archive": "hl7"}
        self._replay_done = False
        self._replay_total = 1
        self._replay_read = 0
        self.mllp_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, offset_of: Any) -> None:
        self._context_offset = offset_of
        if self.replay is not None:
            if not self.settings.hl7_archive_dir:
                raise PermanentError("HL7 replay needs HL7_ARCHIVE_DIR (the archive is the HL7 history)")
            self._reader = ArchiveReader(self.settings.hl7_archive_dir, self.replay.since_ms, self.replay.until_ms)
            start = offset_of(self._replay_partition) or {}
            self._replay_total = max(1, self._reader.total_bytes())
            self._replay_read = int(start.get("read", 0))
            self._replay_iter = self._reader.read(start.get("file"), int(start.get("pos", 0)))
            return
        if self.settings.hl7_archive_dir:
            self.archive = ArchiveWriter(self.settings.hl7_archive_dir)
        s = self.settings
        limits = MllpLimits(max_message_bytes=s.mllp_frame_cap(), read_timeout_s=s.mllp_read_timeout_ms / 1000,
                            idle_timeout_s=s.mllp_idle_timeout_ms / 1000, max_connections=s.mllp_max_connections,
                            max_unacked_bytes=max(32 << 20, 2 * s.mllp_frame_cap()))
        self.server = MllpServer(s.mllp_host, s.mllp_port, self.inbox.put, limits)
        self.server.start()
        self.mllp_port = self.server.port
        log.info("MLLP listener on %s:%s (frame cap %d bytes, messages over %d bytes refused)", s.mllp_host,
                 self.server.port, limits.max_message_bytes, self.max_message_bytes)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.archive is not None:
            self.archive.close()

    def done(self) -> bool:
        return self._replay_done

    def progress(self) -> float | None:
        if self.replay is None:
            return None
        return 1.0 if self._replay_done else min(1.0, self._replay_read / self._replay_total)

    # -- live ------------------------------------------------------------------------------------------
    def poll(self) -> Sequence[Record]:
        if self.replay is not None:
            return self._poll_archive()
        try:
            first = self.inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        if first is None:
            return []
        inbound = [first]
        while len(inbound) < self.settings.hl7_max_batch:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                break
            if message is not None:
                inbound.append(message)
        archived: list[str | None] = [None] * len(inbound)
        if self.archive is not None:
            for i, message in enumerate(inbound):
                if not message.truncated:  # over the frame cap: only its head was kept, nothing to archive
                    archived[i] = self.archive.append(message.raw, message.received_ms)
            self.archive.sync()  # the history is on disk before anything is acknowledged
        batch: list[Record] = []
        pending: list[_Pending] = []
        touched: dict[str, tuple[_SenderIds, dict[str, Any]]] = {}
        for message, where in zip(inbound, archived):
            self._process(message.raw, message, batch, pending, touched, where)
        for ids, offset in touched.values():
            offset["recent"] = list(ids.ids)  # records share this dict: it is final before the commit
        if not batch:
            self._answer(pending, committed=True)
            return batch
        # The offset's list is the sender's ids after this batch: what a commit of it makes committed.
        self._batches.append((pending, [(ids, offset["recent"]) for ids, offset in touched.values()]))
        return batch

    def wake(self) -> None:
        """End a poll waiting for messages: the batch before it committed and its ACKs are due."""
        self.inbox.put(None)

    def _process(self, raw: bytes, inbound: InboundMessage | None, batch: list[Record], pending: list[_Pending],
                 touched: dict[str, tuple[_SenderIds, dict[str, Any]]], archived: str | None = None) -> None:
        """``archived``: where the message is in the archive (``<day file>@<byte position>``)."""
        size = inbound.size if inbound is not None else len(raw)
        if size > self.max_message_bytes:
            self._refuse_too_large(raw, size, inbound, archived, batch, pending)
            return
        header: Header | None = None
        try:
            text = raw.decode(self.settings.hl7_encoding)
            header = read_header(text)
            check_supported(header)
            message = parse_oru(text)
        except UnicodeDecodeError:
            header = _ascii_header(raw)
            error = Hl7Error(f"message {header.control_id if header else '?'}: not valid {self.settings.hl7_encoding}")
            self._reject(raw, inbound, header, error, AckError(DATA_TYPE_ERROR, str(error)), batch, pending)
            return
        except Hl7Error as exc:
            condition = exc.condition if isinstance(exc, Rejected) else SEGMENT_SEQUENCE_ERROR  # no MSH, bad structure
            self._reject(raw, inbound, header, exc, AckError(condition, str(exc)), batch, pending)
            return
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the intake
            header = header or _ascii_header(raw)
            error = _unexpected((header.control_id if header else "") or "?", exc)
            batch.append(self._dead_letter(raw, header, error))
            pending.append(_Pending(inbound, header, "AE", AckError(APPLICATION_INTERNAL_ERROR, str(error))))
            return
        if inbound is not None:
            self.peers.accepted(inbound.peer_host)
        key = (message.sending_app, message.sending_facility, message.control_id)
        ids = self._sender_ids(message.sender)
        if key in self._inflight:  # re-sent while the original is not committed yet
            if inbound is not None:
                self._inflight[key].waiters.append(inbound)
            return
        if message.control_id in ids.set:  # already committed: acknowledge again, write nothing
            pending.append(_Pending(inbound, header, "AA"))
            return
        partition = self._sender_partition(message.sender)
        if message.sender not in touched:
            touched[message.sender] = (ids, {"recent": []})
        offset = touched[message.sender][1]
        try:
            records = self.mapper.map(message, partition, offset, self.headers)
        except Exception as exc:  # noqa: BLE001 - one message's content must not fail the task
            error = exc if isinstance(exc, Hl7ContentError) else _unexpected(message.control_id, exc)
            batch.append(self._dead_letter(raw, header, error))
            pending.append(_Pending(inbound, header, "AE", AckError(content_condition(error), str(error))))
            return
        if self.topic_filter is not None:
            records = [r for r in records if self.topic_filter(r.topic)]
        ids.add(message.control_id)
        item = _Pending(inbound, header, "AA", key=key)
        self._inflight[key] = item
        pending.append(item)
        if self.replay is None:  # a replay answers nobody
            for record in records:
                self._origin[id(record)] = (item, ids, offset, message.control_id)
        batch.extend(records)

    def _sender_ids(self, sender: str) -> _SenderIds:
        ids = self._senders.get(sender)
        if ids is None:
            offset = self._context_offset(self._sender_partition(sender)) or {}
            ids = _SenderIds([str(i) for i in offset.get("recent", [])], self.settings.hl7_dedup_window)
            self._senders[sender] = ids
        return ids

    def _sender_partition(self, sender: str) -> dict[str, Any]:
        """With TASKS_MAX > 1 each listener keeps its own de-duplication window per sender: two
        processes writing one offset key would overwrite each other's (a re-send that reaches
        another listener is processed again, with the same event ids, which the sinks skip)."""
        partition: dict[str, Any] = {"lis": self.settings.lis_name, "sender": sender}
        if self.settings.tasks_max > 1:
            partition["task"] = self.settings.task_id
        return partition

    def _reject(self, raw: bytes, inbound: InboundMessage | None, header: Header | None, error: Hl7Error,
                reason: AckError, batch: list[Record], pending: list[_Pending],
                extra_headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """AR; dead-lettered unless the peer is over its limit of rejects in a row (then disconnected)."""
        over = inbound is not None and self.peers.rejected(inbound.peer_host)
        if not over:
            batch.append(self._dead_letter(raw, header, error, extra_headers))
        pending.append(_Pending(inbound, header, "AR", reason, close=over))

    def _refuse_too_large(self, raw: bytes, size: int, inbound: InboundMessage | None, archived: str | None,
                          batch: list[Record], pending: list[_Pending]) -> None:
        """The dead letter is the MSH segment and headers saying what happened: the body would not fit."""
        head = raw[:HEAD_BYTES]  # a large message is not decoded or split as a whole for its MSH
        header = _ascii_header(head)
        control_id = (header.control_id if header else "") or "?"
        error = MessageTooLarge(f"message {control_id}: {size} bytes, more than the {self.max_message_bytes} "
                                "bytes accepted")
        facts = [("lis.refused", b"too-large"), ("lis.message_bytes", str(size).encode()),
                 ("lis.limit_bytes", str(self.max_message_bytes).encode())]
        if header is not None:
            facts.append(("lis.sender", f"{header.sending_app}|{header.sending_facility}".encode()))
        if inbound is not None:
            facts.append(("lis.peer", inbound.peer.encode()))
        if archived is not None:
            facts.append(("lis.archive", archived.encode()))
        log.warning("HL7 message %s from %s: %d bytes, over the limit of %d: refused (AR), %s", control_id,
                    inbound.peer if inbound else "the archive", size, self.max_message_bytes,
                    f"archived at {archived}" if archived else "not archived")
        msh = head.split(b"\r", 1)[0].split(b"\n", 1)[0] if header is not None else b""
        self._reject(msh, inbound, header, error, AckError(APPLICATION_INTERNAL_ERROR, str(error)), batch, pending,
                     facts)

    def _dead_letter(self, raw: bytes, header: Header | None, error: BaseException,
                     extra_headers: Sequence[tuple[str, bytes]] = ()) -> DeadLetter:
        control_id = header.control_id.encode() if header and header.control_id else None
        headers = list(self.headers)
        if control_id:
            headers.append(("lis.message_id", control_id))
        headers.extend(extra_headers)
        return DeadLetter(payload=raw, error=error, key=control_id, headers=headers)

    # -- ACKs ------------------------------------------------------------------------------------------
    def on_record_failed(self, record: SourceRecord, error: BaseException) -> None:
        """A record of this message went to the DLQ instead of its topic: answer AE, and
        let a re-send of the message be processed again (its other records are written
        again with the same event ids, which the sinks absorb)."""
        origin = self._origin.get(id(record))
        if origin is None:
            return
        item, ids, offset, control_id = origin
        item.code, item.error = "AE", AckError(APPLICATION_INTERNAL_ERROR, "message could not be stored completely")
        if record.topic == self.settings.patients_topic and record.key:
            self.mapper.forget_contact(record.key)
        ids.forget(control_id)
        if control_id in offset["recent"]:  # the source offset written with this batch
            offset["recent"].remove(control_id)

    def on_committed(self, batch: Sequence[Record]) -> None:
        for record in batch:
            self._origin.pop(id(record), None)
        if not self._batches:
            return
        pending, senders = self._batches.popleft()
        for ids, after_batch in senders:
            ids.commit(after_batch)
        self._answer(pending, committed=True)

    def on_aborted(self, batch: Sequence[Record], error: BaseException) -> None:
        for record in batch:
            self._origin.pop(id(record), None)
        if not self._batches:
            return
        pending, senders = self._batches.popleft()
        for ids, _ in senders:
            ids.rollback()
        self.mapper.reset()
        self._answer(pending, committed=False)

    def _answer(self, pending: list[_Pending], committed: bool) -> None:
        for item in pending:
            if item.key is not None:
                self._inflight.pop(item.key, None)
            code, error = (item.code, item.error) if committed else ("AE", _NOT_STORED)
            ack = build_ack(item.header, code, error).encode(self.settings.hl7_encoding, "replace")
            if item.inbound is not None:
                item.inbound.reply(ack, close=item.close)
            for waiter in item.waiters:
                waiter.reply(ack)

    # -- replay ----------------------------------------------------------------------------------------
    def _poll_archive(self) -> Sequence[Record]:
        batch: list[Record] = []
        pending: list[_Pending] = []
        touched: dict[str, tuple[_SenderIds, dict[str, Any]]] = {}
        offset: dict[str, Any] = {}
        last = None
        count = 0
        for archived in self._replay_iter:
            self._replay_read += len(archived.raw) + 32
            before = len(batch)
            self._process(archived.raw, None, batch, pending, touched, f"{archived.file}@{archived.pos}")
            # Every record of the batch carries the archive position after the batch (filled in below).
            batch[before:] = [r if isinstance(r, DeadLetter) else _rebase(r, self._replay_partition, offset)
                              for r in batch[before:]]
            last = archived
            count += 1
            if count >= self.settings.hl7_max_batch:
                break
        else:
            self._replay_done = True
        if last is not None:
            offset.update({"file": last.file, "pos": last.next_pos, "read": self._replay_read})
        # In replay the seen set only de-duplicates within the run: nothing is acknowledged.
        self._inflight.clear()
        for ids, _ in touched.values():
            ids.commit()
        return batch


def _ascii_header(raw: bytes) -> Header | None:
    """MSH read as latin-1 (its fields are ASCII), so that the ACK of a message in the
    wrong charset still names it; None when there is no MSH."""
    try:
        return read_header(raw.decode("latin-1"))
    except Hl7Error:
        return None


def _unexpected(control_id: str, error: Exception) -> Hl7ContentError:
    """A PHI-free stand-in for an unexpected error (its message may quote the content);
    it keeps the traceback, whose frames the DLQ records without messages or locals."""
    log.warning("message %s could not be processed (%s): dead-lettered", control_id, type(error).__name__)
    return Hl7ContentError(f"message {control_id}: processing failed ({type(error).__name__})").with_traceback(
        error.__traceback__)


def _rebase(record: SourceRecord, partition: dict[str, Any], offset: dict[str, Any]) -> SourceRecord:
    return SourceRecord(record.topic, record.key, record.value, record.schema, partition, offset, record.headers,
                        record.timestamp_ms)
