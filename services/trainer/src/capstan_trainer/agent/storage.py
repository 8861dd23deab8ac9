"""Durable training output: each instance's /opt/ml/output and /opt/ml/model, kept in platform storage.

The agent copies an instance's two directories to ``<storage>/train/<task-id>/<index>/{output,model}``
every few seconds while it runs and once more when it exits (before the exit is reported), and seeds
a new attempt's instance directory from there, so a task requeued onto *any* node resumes from its
last checkpoint. ``<storage>`` is shared by every agent started from one data dir (``capstan up``,
``capstan agent start``); across machines it is a shared mount.

The copies are incremental mirrors (a file whose size and mtime have not changed is not copied
again) made by :func:`.safefs.mirror`: a symbolic link user code left in its directories is never
followed and never stored (a stored link would lead wherever it points on whichever host later reads
it), and special files are skipped, so a task cannot make the agent (root) read a host file.
Each ``<index>`` directory records the newest attempt that wrote (or resumed from) it: a stale
attempt still leaving a node that came back cannot overwrite what a newer attempt saved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from capstan_agentkit.safefs import mirror

DIRS = ("output", "model")
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # no '.', '/': one plain path component
_ATTEMPT_FILE = "attempt"


class OutputStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def instance_dir(self, task_id: str, index: int) -> Path:
        """``<root>/train/<task-id>/<index>``, refusing anything that could leave the root."""
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
            raise ValueError(f"invalid task id for a storage path: {task_id!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"invalid instance index: {index!r}")
        path = (self.root / "train" / task_id / str(index)).resolve()
        if not path.is_relative_to(self.root / "train"):
            raise ValueError(f"storage path for {task_id}/{index} leaves {self.root}")
        return path

    def save(self, task_id: str, index: int, attempt: int, instance_dir: Path) -> bool:
        """Copy the instance's output and model dirs to storage; False (nothing written) when a newer
        attempt already owns the storage of this instance index."""
        d = self.instance_dir(task_id, index)
        with self._locked(d):
            owner = _read_attempt(d)
            if owner is not None and owner > attempt:
                return False
            for name in DIRS:
                mirror(instance_dir / name, d / name)
            _write_attempt(d, attempt)
        return True

    def restore(self, task_id: str, index: int, attempt: int, instance_dir: Path) -> bool:
        """Seed a new attempt's output and model dirs from storage (False: storage holds nothing for
        this instance). From now on, only ``attempt`` or a newer one may write there."""
        d = self.instance_dir(task_id, index)
        if not d.is_dir():
            return False
        with self._locked(d):
            if not any((d / name).is_dir() for name in DIRS):
                return False
            for name in DIRS:
                if (d / name).is_dir():
                    mirror(d / name, instance_dir / name)
            owner = _read_attempt(d)
            if owner is None or owner < attempt:
                _write_attempt(d, attempt)
        return True

    def seed(self, source_task_id: str, index: int, instance_dir: Path) -> bool:
        """Seed a new task's instance from what another task's instance ``index`` left (start again)."""
        d = self.instance_dir(source_task_id, index)
        if not d.is_dir():
            return False
        with self._locked(d):
            for name in DIRS:
                if (d / name).is_dir():
                    mirror(d / name, instance_dir / name)
        return True

    @contextlib.contextmanager
    def _locked(self, d: Path) -> Iterator[None]:
        """One writer or reader at a time per instance index, across agents sharing the storage."""
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _read_attempt(d: Path) -> int | None:
    try:
        return int((d / _ATTEMPT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _write_attempt(d: Path, attempt: int) -> None:
    tmp = d / f".{_ATTEMPT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(str(attempt))
    os.replace(tmp, d / _ATTEMPT_FILE)
