"""The event store: append to and load aggregates from JetStream.

One JetStream message is one *commit*: the list of events one command decided,
stored atomically on the aggregate's subject. Concurrency uses
``Nats-Expected-Last-Subject-Sequence`` (a conflict raises ``Conflict``);
idempotent retries use ``Nats-Msg-Id`` (a duplicate appends nothing and reports
the original sequence). Trace context travels in the message headers.

Anything can end up in the stream (a bug, an older or newer writer, a hostile publisher), so reading
is total: a message that is not a commit this process can read raises ``PoisonCommit`` with a kind and
an error that depend only on the message's bytes (and this code), never on the moment it is read. The
projection runner records such a commit in its quarantine table; ``load`` skips it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from pydantic import ValidationError

from . import identity, tracing
from .errors import Conflict, InvalidArgument, Unavailable
from .events import Event, NewerEventVersion, decode
from .metrics import SKIPPED_ON_LOAD, Counters
from .streams import EVENTS_STREAM, MAX_COMMIT_BYTES

log = logging.getLogger(__name__)

ERR_WRONG_LAST_SEQUENCE = 10071
HDR_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HDR_MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True)
class RecordedEvent:
    """One event as stored: its commit's stream sequence and its index within the commit."""

    seq: int
    index: int
    subject: str
    event: Event
    time_ms: int
    headers: Mapping[str, str] = field(default_factory=dict)
    # Who acted (the commit envelope's "by"): account, tenant, key_id, source; or {"caller": name}.
    by: Mapping[str, object] = field(default_factory=dict)

    @property
    def aggregate_id(self) -> str:
        return self.subject.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class AppendResult:
    seq: int
    duplicate: bool


def actor_of(caller: identity.Caller) -> bytes:
    """The commit envelope's ``by``: the acting principal (the audit trail), never a secret."""
    p = caller.principal
    if p is not None:
        return p.to_json().encode()
    return json.dumps({"caller": caller.name}, separators=(",", ":")).encode()


def encode_commit(events: Sequence[Event], time_ms: int, by: bytes | None = None) -> bytes:
    """``{"t": ms, "by": {...}, "events": [{"type", "version", "data"}]}``, each event's data serialised by
    pydantic's compiled serialiser (UTF-8, not ASCII-escaped; both decode the same). ``by``: the acting
    principal, from the current caller unless given."""
    parts = []
    for e in events:
        if not e.TYPE:
            raise ValueError(f"{type(e).__name__} has no registered event type name")
        parts.append(b'{"type":"%s","version":%d,"data":%s}' % (e.TYPE.encode(), e.VERSION, e.model_dump_json().encode()))
    actor = by if by is not None else actor_of(identity.current_caller())
    return b'{"t":%d,"by":%s,"events":[%s]}' % (time_ms, actor, b",".join(parts))


class PoisonCommit(ValueError):
    """A stored message that is not a commit this process can read. ``kind``: ``oversized`` (over
    ``MAX_COMMIT_BYTES``), ``undecodable`` (not JSON, or not a commit's shape), ``newer_version`` (a
    known event type at a version newer than this process reads), ``invalid`` (an event's data fails
    its model's validation)."""

    def __init__(self, kind: str, error: str) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind = kind
        self.error = error


def _validation_text(e: ValidationError) -> str:
    """pydantic's errors without input values or URLs: short, and the same on every read."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(event)'}: {err['msg']}" for err in e.errors())


def decode_commit(seq: int, subject: str, data: bytes, headers: Mapping[str, str] | None) -> list[RecordedEvent]:
    """The events of one stored commit; raises ``PoisonCommit`` for anything else."""
    if len(data) > MAX_COMMIT_BYTES:
        raise PoisonCommit("oversized", f"{len(data)} bytes, over the {MAX_COMMIT_BYTES}-byte limit of a commit")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError included; RecursionError: absurd nesting
        raise PoisonCommit("undecodable", f"not JSON ({type(e).__name__}: {e})") from None
    raw_events = body.get("events") if isinstance(body, dict) else None
    t = body.get("t", 0) if isinstance(body, dict) else None
    if not isinstance(raw_events, list) or not raw_events or type(t) is not int:
        raise PoisonCommit("undecodable", 'not a commit: expected {"t": <ms>, "events": [<at least one event>]}')
    hdrs = dict(headers or {})
    by = body.get("by")
    actor = by if isinstance(by, dict) else {}
    out = []
    for i, raw in enumerate(raw_events):
        name = raw.get("type") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            raise PoisonCommit("undecodable", f'event {i}: an event is {{"type": str, "version": int, "data": {{...}}}}')
        where = f"event {i} ({name})"
        try:
            ev = decode(raw)
        except NewerEventVersion as e:
            raise PoisonCommit("newer_version", f"{where}: {e}") from None
        except ValidationError as e:
            raise PoisonCommit("invalid", f"{where}: {_validation_text(e)}") from None
        except Exception as e:  # an upcaster or a shape check refusing the data
            raise PoisonCommit("invalid", f"{where}: {type(e).__name__}: {e}") from None
        out.append(RecordedEvent(seq=seq, index=i, subject=subject, event=ev, time_ms=t, headers=hdrs, by=actor))
    return out


class EventStore:
    """Append-only store of commits on per-aggregate subjects of one JetStream stream."""

    def __init__(
        self, js: JetStreamContext, stream: str = EVENTS_STREAM, cache_size: int = 4096, counters: Counters | None = None
    ) -> None:
        self._js = js
        self._stream = stream
        self._counters = counters or Counters()
        # Loaded aggregates are cached; a load only fetches what was appended since.
        self._cache: OrderedDict[str, tuple[list[RecordedEvent], int]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def stream(self) -> str:
        return self._stream

    async def append(
        self,
        subject: str,
        events: Sequence[Event],
        *,
        expected_seq: int | None,
        msg_id: str | None = None,
    ) -> AppendResult:
        """Append one commit. ``expected_seq``: None = no check, 0 = the subject must be empty,
        N = the subject's last sequence must be N."""
        if not events:
            raise ValueError("append needs at least one event")
        # Only the headers JetStream acts on, and the trace context: each costs the server time.
        headers: dict[str, str] = {}
        if expected_seq is not None:
            headers[HDR_EXPECTED_LAST_SUBJECT_SEQ] = str(expected_seq)
        if msg_id:
            headers[HDR_MSG_ID] = msg_id
        tracing.inject(headers)
        payload = encode_commit(events, int(time.time() * 1000))
        if len(payload) > MAX_COMMIT_BYTES:
            # The stream refuses it too (max_msg_size); saying so here names the limit.
            raise InvalidArgument(
                f"the change is too large to record: {len(payload)} bytes, over the {MAX_COMMIT_BYTES}-byte limit"
            )
        try:
            ack = await self._js.publish(subject, payload, headers=headers)
        except APIError as e:
            if e.err_code == ERR_WRONG_LAST_SEQUENCE:
                # JetStream checks the expected sequence before the msg-id: a retry of a
                # command that did land arrives here. Find the original commit and report it.
                if msg_id:
                    original = await self._find_msg_id(subject, msg_id)
                    if original is not None:
                        return AppendResult(seq=original, duplicate=True)
                raise Conflict(
                    f"{subject} changed since it was read (expected last sequence {expected_seq}); retry"
                ) from e
            raise
        except (TimeoutError, NotFoundError, NoRespondersError) as e:
            raise Unavailable("the event log (NATS JetStream) did not acknowledge the write; retry") from e
        return AppendResult(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def _find_msg_id(self, subject: str, msg_id: str) -> int | None:
        events, _ = await self.load(subject)
        for rec in reversed(events):
            if rec.headers.get(HDR_MSG_ID) == msg_id:
                return rec.seq
        return None

    async def load(self, subject: str) -> tuple[list[RecordedEvent], int]:
        """All events of one aggregate, in order, and the subject's last sequence (0 if none)."""
        cached = self._cache.get(subject)
        events, last = (list(cached[0]), cached[1]) if cached else ([], 0)
        seq = last + 1
        while True:
            try:
                msg = await self._js.get_msg(self._stream, seq=seq, subject=subject, next=True, direct=True)
            except NotFoundError:
                break
            assert msg.seq is not None and msg.data is not None
            try:
                events.extend(decode_commit(msg.seq, subject, msg.data, msg.headers))
            except PoisonCommit as e:
                # Skipped the same way on every load, so every command on this aggregate still works;
                # the projection runner records it in the quarantine table.
                log.warning("%s: commit %d is skipped (%s)", subject, msg.seq, e)
                self._counters.inc(SKIPPED_ON_LOAD, kind=e.kind)
            last = msg.seq
            seq = msg.seq + 1
        self._cache[subject] = (events, last)
        self._cache.move_to_end(subject)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return list(events), last

    async def last_seq(self) -> int:
        info = await self._js.stream_info(self._stream)
        return int(info.state.last_seq)
