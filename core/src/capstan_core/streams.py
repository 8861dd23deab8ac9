"""The JetStream streams Capstan uses, and their limits.

- ``CAPSTAN_EVENTS`` (``capstan.evt.<aggregate-kind>.<id>``): the event log. File
  storage, no age limit, kept forever. Deduplication window 24 h for
  ``Nats-Msg-Id``; creates also derive their id from the idempotency key, so a
  retry after the window still appends nothing more (it hits the
  expected-sequence check). A message (one commit) may be at most ``MAX_COMMIT_BYTES``:
  the stream refuses a larger one, and every reader sets a larger one aside (an older
  stream may hold one from before the limit).
- ``CAPSTAN_LOGS`` (``capstan.log.<task>.<instance>``): instance stdout/stderr,
  15-day age limit (SPEC §0).
- ``capstan.wake.agents`` (core NATS, no stream): wake-ups for node agents.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from .errors import InvalidArgument

log = logging.getLogger(__name__)

_SUBJECT_TOKEN = re.compile(r"^[^\s*>\x00-\x1f\x7f]+$")

EVENTS_STREAM = "CAPSTAN_EVENTS"
EVENTS_SUBJECTS = "capstan.evt.>"
LOGS_STREAM = "CAPSTAN_LOGS"
LOGS_SUBJECTS = "capstan.log.>"
# Core NATS, not JetStream: content-free "something changed" pings that wake node agents, published
# by services once their read models hold new events (agents then ask the owners what to run).
WAKE_SUBJECTS = "capstan.wake.>"
WAKE_AGENTS = "capstan.wake.agents"
LOG_MAX_AGE_S = 15 * 24 * 3600
DAY_S = 24 * 3600
# Half of NATS's default 1 MiB payload limit: a command's events are a few KiB, and the edge caps what a
# user can put in one far below this, so only a bug or a hostile publisher reaches it.
MAX_COMMIT_BYTES = 512 * 1024


def event_subject(kind: str, aggregate_id: str) -> str:
    """The aggregate's subject. An id that is no literal subject (empty, a wildcard, whitespace,
    an empty token) names nothing that can exist: refused before the store is touched."""
    if not aggregate_id or not all(t and _SUBJECT_TOKEN.match(t) for t in aggregate_id.split(".")):
        raise InvalidArgument(f"{aggregate_id[:80]!r} is not a valid id", field="id")
    return f"capstan.evt.{kind}.{aggregate_id}"


def log_subject(task_id: str, instance_index: int) -> str:
    return f"capstan.log.{task_id}.{instance_index}"


def stream_configs() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_SUBJECTS],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            duplicate_window=DAY_S,
            allow_direct=True,
            max_msg_size=MAX_COMMIT_BYTES,
        ),
        StreamConfig(
            name=LOGS_STREAM,
            subjects=[LOGS_SUBJECTS],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=LOG_MAX_AGE_S,
            duplicate_window=600,
        ),
    ]


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the streams if missing, and give an existing one the message size limit it lacks
    (idempotent; every service calls it at start)."""
    for cfg in stream_configs():
        assert cfg.name is not None
        try:
            info = await js.stream_info(cfg.name)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
            except Exception:
                # Another service created it between our check and our add.
                await js.stream_info(cfg.name)
            continue
        want = cfg.max_msg_size
        if want is not None and info.config.max_msg_size != want:
            log.info("stream %s: setting the message size limit to %d bytes", cfg.name, want)
            await js.update_stream(dataclasses.replace(info.config, max_msg_size=want))
