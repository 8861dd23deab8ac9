"""Ships an instance's log lines (log.jsonl, written by the runner) to the CAPSTAN_LOGS stream.

The shipped offset is kept in the instance directory, and each line's
``Nats-Msg-Id`` is derived from it, so an agent restarted mid-ship neither loses
nor duplicates lines.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.js import JetStreamContext

from capstan_core.streams import LOGS_STREAM, log_subject

from .sandbox import read_log

OFFSET_FILE = "log_offset"
MAX_LINE = 16_384  # characters of one line kept in the stream


def encode_line(ts_ms: int, stream: str, line: str) -> bytes:
    """One log record as the CAPSTAN_LOGS stream holds it (readers decode ``ts_ms``, ``stream``, ``line``)."""
    return json.dumps({"ts_ms": ts_ms, "stream": stream, "line": line[:MAX_LINE]}, ensure_ascii=False).encode()


def _offset(instance_dir: Path) -> int:
    try:
        return int((instance_dir / OFFSET_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _save_offset(instance_dir: Path, offset: int) -> None:
    tmp = instance_dir / (OFFSET_FILE + ".tmp")
    tmp.write_text(str(offset))
    tmp.replace(instance_dir / OFFSET_FILE)


async def ship(js: JetStreamContext, task_id: str, index: int, log_path: Path, key: str | None = None) -> int:
    """Publish every complete line not shipped yet; returns how many were shipped. ``key`` names the
    attempt's instance (``train-x.1``) in the msg-ids, so two attempts' lines never deduplicate."""
    instance_dir = log_path.parent
    shipped = 0
    subject = log_subject(task_id, index)
    while True:
        start = _offset(instance_dir)
        entries, new_offset = read_log(log_path, start)
        if not entries:
            return shipped
        acks = [
            js.publish(
                subject,
                encode_line(int(e.get("ts_ms", 0)), str(e.get("stream", "stdout")), str(e.get("line", ""))),
                stream=LOGS_STREAM,
                headers={"Nats-Msg-Id": f"{key or task_id}:{index}:{start}:{i}"},
            )
            for i, e in enumerate(entries)
        ]
        for chunk in range(0, len(acks), 256):
            await asyncio.gather(*acks[chunk : chunk + 256])
        _save_offset(instance_dir, new_offset)
        shipped += len(entries)
