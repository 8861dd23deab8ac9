"""TensorBoard on a task's summaries (SPEC §3.3): started by the trainer on request, reached only
through the gateway (authenticated, ``/api/v1/training-tasks/<id>/tensorboard/``).

The summaries are what instances write to ``/opt/ml/summary`` (the sandbox binds it to
``/opt/ml/output/summary``, so it is saved with the output): TensorBoard reads platform storage
(``<storage>/train/<task>/<index>/output/summary``, one run per instance), where nothing is a link
(storage never keeps one). It listens on loopback, under the gateway's path prefix; at most
``MAX_RUNNING`` run at once (the oldest started is stopped for a new one), all stop with the trainer.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan_core.errors import FailedPrecondition

from .agent.storage import OutputStore

MAX_RUNNING = 4
SUMMARY = ("output", "summary")


def path_prefix(task_id: str) -> str:
    return f"/api/v1/training-tasks/{task_id}/tensorboard"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    started: float


class TensorBoards:
    def __init__(self, storage_root: Path, log_dir: Path) -> None:
        self.store = OutputStore(storage_root)
        self.log_dir = log_dir
        self._running: dict[str, Running] = {}

    def start(self, task: dict[str, Any]) -> tuple[int, bool]:
        """(port, ready) of the task's TensorBoard, starting it if it does not run."""
        task_id = task["id"]
        have = self._running.get(task_id)
        if have is not None and have.proc.poll() is None:
            return have.port, _listening(have.port)
        try:
            import tensorboard  # noqa: F401 - only to say clearly when it is missing
        except ImportError as e:
            raise FailedPrecondition("TensorBoard is not installed with the trainer (pip install tensorboard)") from e
        self._make_room()
        runs = ",".join(
            f"instance-{i}:{self.store.instance_dir(task_id, i).joinpath(*SUMMARY)}"
            for i in range(int(task["instance_count"]))
        )
        port = _free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"tensorboard-{task_id}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tensorboard.main", "--logdir_spec", runs, "--host", "127.0.0.1",
                 "--port", str(port), "--path_prefix", path_prefix(task_id), "--reload_interval", "15"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        self._running[task_id] = Running(proc, port, time.monotonic())
        return port, False

    def _make_room(self) -> None:
        for task_id, r in list(self._running.items()):
            if r.proc.poll() is not None:
                del self._running[task_id]
        while len(self._running) >= MAX_RUNNING:
            oldest = min(self._running, key=lambda k: self._running[k].started)
            self._stop(oldest)

    def _stop(self, task_id: str) -> None:
        r = self._running.pop(task_id)
        r.proc.terminate()
        try:
            r.proc.wait(5)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()

    def stop_all(self) -> None:
        for task_id in list(self._running):
            self._stop(task_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
