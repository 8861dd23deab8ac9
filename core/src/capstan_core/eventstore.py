"""The event store: append to and load aggregates from JetStream.

One JetStream message is one *commit*: the list of events one command decided,
stored atomically on the aggregate's subject. Concurrency uses
``Nats-Expected-Last-Subject-Sequence`` (a conflict raises ``Conflict``);
idempotent retries use ``Nats-Msg-Id`` (a duplicate appends nothing and reports
the original sequence). Trace context travels in the message headers.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from . import tracing
from .errors import Conflict, Unavailable
from .events import Event, decode
from .streams import EVENTS_STREAM

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

    @property
    def aggregate_id(self) -> str:
        return self.subject.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class AppendResult:
    seq: int
    duplicate: bool


def encode_commit(events: Sequence[Event], time_ms: int) -> bytes:
    """``{"t": ms, "events": [{"type", "version", "data"}]}``, each event's data serialised by
    pydantic's compiled serialiser (UTF-8, not ASCII-escaped; both decode the same)."""
    parts = []
    for e in events:
        if not e.TYPE:
            raise ValueError(f"{type(e).__name__} has no registered event type name")
        parts.append(b'{"type":"%s","version":%d,"data":%s}' % (e.TYPE.encode(), e.VERSION, e.model_dump_json().encode()))
    return b'{"t":%d,"events":[%s]}' % (time_ms, b",".join(parts))


def decode_commit(seq: int, subject: str, data: bytes, headers: Mapping[str, str] | None) -> list[RecordedEvent]:
    body = json.loads(data)
    hdrs = dict(headers or {})
    return [
        RecordedEvent(seq=seq, index=i, subject=subject, event=decode(raw), time_ms=int(body.get("t", 0)), headers=hdrs)
        for i, raw in enumerate(body["events"])
    ]


class EventStore:
    """Append-only store of commits on per-aggregate subjects of one JetStream stream."""

    def __init__(self, js: JetStreamContext, stream: str = EVENTS_STREAM, cache_size: int = 4096) -> None:
        self._js = js
        self._stream = stream
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
            events.extend(decode_commit(msg.seq, subject, msg.data, msg.headers))
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
