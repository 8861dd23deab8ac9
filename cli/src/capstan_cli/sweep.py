"""``capstan task submit --from-file sweep.jsonl``: many tasks at once through the batch route.

Each line of the file is one task, a JSON object with the fields the API's create takes (``name``,
``command``, ``hyperparameters``, ``resources``, ``instance_count``, ``tags``, ...); ``resource_group_id``
defaults to ``--resource-group`` (or the default group of ``capstan up``). Blank lines and lines starting
with ``#`` are skipped. Every line is read and checked for JSON before anything is sent; the tasks then go
in batches of ``CHUNK``, each with an Idempotency-Key of its own, resent as it was while the platform is
unreachable or answers 5xx (so a retry never creates a task twice).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .client import ApiClient, wait_until

CHUNK = 500
OUTAGE_S = 120.0


def read_tasks(path: Path, default_rg: Callable[[], str]) -> list[dict[str, Any]]:
    """The file's tasks; raises ``click.BadParameter`` naming the line of the first one that is not an object."""
    tasks: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                task = json.loads(text)
            except ValueError as e:
                raise click.BadParameter(f"line {number}: not JSON ({e})", param_hint="--from-file") from e
            if not isinstance(task, dict):
                raise click.BadParameter(f"line {number}: a task is a JSON object", param_hint="--from-file")
            if "resource_group_id" not in task:
                task["resource_group_id"] = default_rg()
            tasks.append(task)
    if not tasks:
        raise click.BadParameter(f"{path} holds no task", param_hint="--from-file")
    return tasks


def submit_all(client: ApiClient, tasks: list[dict[str, Any]], *, progress: bool) -> list[dict[str, Any]]:
    """Submit in batches; the created tasks, in the file's order. Shows progress on stderr."""
    run = uuid.uuid4().hex[:12]
    created: list[dict[str, Any]] = []
    for start in range(0, len(tasks), CHUNK):
        chunk = tasks[start:start + CHUNK]
        headers = {"Idempotency-Key": f"sweep-{run}-{start}"}
        answer = wait_until(lambda chunk=chunk, headers=headers: client.post(  # type: ignore[misc]
            "/training-tasks/batch", {"items": chunk}, headers=headers), OUTAGE_S)
        created.extend(answer["items"])
        if progress:
            click.echo(f"\rsubmitted {len(created)}/{len(tasks)}", nl=False, err=True)
    if progress:
        click.echo("", err=True)
    return created


def progress_wanted() -> bool:
    return sys.stderr.isatty()
