"""Instance logs: the agent ships lines to ``capstan.log.<task>.<instance>`` (stream CAPSTAN_LOGS,
15-day age limit); queries read them back filtered by time range, keyword and instance."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from .errors import InvalidArgument
from .numbers import INT64_MAX, MAX_TIME_MS
from .streams import LOGS_STREAM, log_subject

MAX_LIMIT = 10_000

# SPEC §3.3: logs split into the platform's (setup, containment, exit) and the code's (stdout, stderr);
# "metrics" are the instance's usage samples (the runner's), shown apart from either.
SOURCES = {"": ("platform", "stdout", "stderr"), "platform": ("platform",), "code": ("stdout", "stderr"),
           "metrics": ("metrics",)}


@dataclass(frozen=True)
class LogLine:
    ts_ms: int
    instance_index: int
    stream: str
    line: str
    seq: int


async def read_logs(
    js: JetStreamContext, task_id: str, *, start_ms: int = 0, end_ms: int = 0, keyword: str = "",
    instance_index: int = -1, after_seq: int = 0, limit: int = 1000, source: str = "",
) -> tuple[list[LogLine], int]:
    """Lines in stream order; returns them and the last sequence read (for --follow)."""
    if source not in SOURCES:
        raise InvalidArgument("source must be platform, code or metrics (or empty: platform and code)", field="source")
    streams = SOURCES[source]
    limit = limit or 1000
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be 1..{MAX_LIMIT}", field="limit")
    for name, ms in (("start", start_ms), ("end", end_ms)):
        if not 0 <= ms <= MAX_TIME_MS:
            raise InvalidArgument(
                f"{name} must be epoch milliseconds from 0 to {MAX_TIME_MS} (9999-12-31T23:59:59.999Z)", field=name
            )
    if end_ms and start_ms and end_ms < start_ms:
        raise InvalidArgument("end must not be before start", field="end")
    if not 0 <= after_seq <= INT64_MAX:
        raise InvalidArgument(f"after_seq must be 0..{INT64_MAX} (a last_seq this service returned)", field="after_seq")
    subject = log_subject(task_id, instance_index) if instance_index >= 0 else f"capstan.log.{task_id}.*"
    if after_seq:
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
    elif start_ms:
        start = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    else:
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    sub = await js.subscribe(subject, stream=LOGS_STREAM, ordered_consumer=True, config=cfg)
    lines: list[LogLine] = []
    last_seq = after_seq
    needle = keyword.lower()
    try:
        info = await sub.consumer_info()
        # A push consumer may have delivered messages already: "nothing at all" is no pending
        # and nothing delivered; otherwise read until a message says none remain after it.
        delivered = info.delivered.consumer_seq if info.delivered else 0
        pending = int(info.num_pending or 0) + int(delivered or 0)
        while pending > 0 and len(lines) < limit:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except NatsTimeout:
                break
            meta = msg.metadata
            pending = int(meta.num_pending)
            last_seq = int(meta.sequence.stream)
            body = json.loads(msg.data)
            ts = int(body["ts_ms"])
            if end_ms and ts > end_ms:
                break
            if start_ms and ts < start_ms:
                continue
            if body["stream"] not in streams or (needle and needle not in body["line"].lower()):
                continue
            index = int(msg.subject.rsplit(".", 1)[-1])
            lines.append(LogLine(ts, index, body["stream"], body["line"], last_seq))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return lines, last_seq
