"""Reading a task's logs page by page (``after_seq``), and following them until the task ends."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from capstan_core.contracts.task_status import FINISHED

from .client import ApiClient, wait_until

PAGE = 1000
POLL_S = 1.0
# Lines may land in the log store a moment after the task is seen ended: wait this long for stragglers.
SETTLE_S = 2.0
OUTAGE_S = 120.0


def _print(line: dict[str, Any], prefix: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(line))
        return
    text = str(line.get("line", "")).rstrip("\n")
    click.echo(f"[{line.get('instance')}] {text}" if prefix else text)


def _drain(
    client: ApiClient, task_id: str, params: dict[str, Any], after: int | None, prefix: bool, as_json: bool
) -> tuple[int | None, int]:
    """Print every line after ``after``; returns the new position and how many lines came."""
    count = 0
    while True:
        query = {**params, "after_seq": after, "limit": PAGE}
        page = wait_until(lambda q=query: client.get(f"/training-tasks/{task_id}/logs", **q), OUTAGE_S) or {}
        lines = page.get("lines") or []
        for line in lines:
            _print(line, prefix, as_json)
        count += len(lines)
        if not lines:
            return after, count
        seqs = [int(x["seq"]) for x in lines if x.get("seq") is not None]
        new = max(seqs) if seqs else page.get("last_seq")
        if new is None or (after is not None and int(new) <= after):
            return after, count  # the server gives no position to go on from
        after = int(new)


def stream_logs(
    client: ApiClient,
    task_id: str,
    params: dict[str, Any],
    follow: bool,
    prefix: bool,
    as_json: bool,
    ended: bool,
) -> None:
    after, _ = _drain(client, task_id, params, None, prefix, as_json)
    if not follow:
        return
    ended_since = time.monotonic() if ended else None
    try:
        while True:
            polled_at = time.monotonic()
            after, count = _drain(client, task_id, params, after, prefix, as_json)
            if ended_since is not None and count == 0 and polled_at - ended_since >= SETTLE_S:
                return
            time.sleep(POLL_S)
            if ended_since is None:
                t = wait_until(lambda: client.get(f"/training-tasks/{task_id}"), OUTAGE_S)
                if str(t.get("status")) in FINISHED:
                    ended_since = time.monotonic()
    except KeyboardInterrupt:
        return
