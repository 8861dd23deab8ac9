"""Executors: how the trainer agent starts, watches and stops instances.

All state lives in the instance directory and the runner process, never in
the executor object, so a freshly created executor (a restarted agent)
re-adopts whatever is already running.  Methods are synchronous and quick;
asyncio callers should use ``asyncio.to_thread``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from capstan_agentkit.healthcheck import Check

from . import forkserver, probe
from .config import SandboxConfig
from .containment import Containment
from .leases import process_start
from .spec import (
    EXIT_EXEC_TIMEOUT,
    EXIT_RUNNER_LOST,
    RUNNER_MODULE,
    InstancePaths,
    InstanceSpec,
    enter_argv,
    write_atomic,
)

log = logging.getLogger(__name__)
InstanceState = Literal["absent", "running", "exited"]
_RUNNER_SCRIPT = b"capstan-instance-runner"  # the console-script form of the runner
_FORKSERVER = forkserver.FORKSERVER_MODULE.encode()
_EXEC_OUTPUT_MAX = 4096
_LOST_RUNNER_EXIT_WAIT_S = 5.0  # how long a runner found lost may take to finish dying
# Runners forked by a warm server (:mod:`.forkserver`); "false": a fresh interpreter for each.
_RUNNER_SERVER = os.environ.get("CAPSTAN_SANDBOX_RUNNER_SERVER", "true").lower() not in ("0", "false", "no")


@dataclass(frozen=True)
class InstanceStatus:
    """``exit_code`` is set only when exited; ``pid`` is the runner's, if known; ``reason`` says why
    it exited when the platform knows (``out of memory (limit 1 GiB)``)."""

    state: InstanceState
    exit_code: int | None = None
    pid: int | None = None
    reason: str | None = None


class Executor(ABC):
    """What the agent needs from a way of running instances (bwrap, Kubernetes, ...)."""

    def health_check(self) -> Check | None:
        """A deploy/health check of this way of running instances, or None when it has none."""
        return None

    def reap_stale(self) -> list[str]:
        """Clean up after instances whose supervisor died uncleanly; what was cleaned. Run at agent start."""
        return []

    @abstractmethod
    def start(self, spec: InstanceSpec) -> None:
        """Start the instance; a no-op if it is already running or has exited."""

    @abstractmethod
    def status(self, task_id: str, index: int) -> InstanceStatus: ...

    @abstractmethod
    def stop(self, task_id: str, index: int) -> None:
        """Ask for a graceful stop and return at once; a no-op unless running."""

    @abstractmethod
    def list_instances(self) -> list[tuple[str, int]]:
        """Every instance this executor knows of, running or exited."""

    @abstractmethod
    def log_path(self, task_id: str, index: int) -> Path:
        """The instance's log.jsonl (read it with :func:`read_log`)."""

    @abstractmethod
    def remove(self, task_id: str, index: int) -> None:
        """Delete an exited instance's state; refuses while it is running."""

    def exec(self, task_id: str, index: int, argv: list[str], timeout: float) -> ExecResult:
        """Run ``argv`` inside the running instance (its namespaces, cgroup and uid): an exec probe."""
        raise NotImplementedError(f"{type(self).__name__} cannot run commands inside an instance")

    def address(self, task_id: str, index: int) -> str | None:
        """Where the host reaches the running instance's network (None until it has started)."""
        return None

    def published(self, task_id: str, index: int) -> dict[int, str]:
        """Where other hosts reach the running instance's published ports (none: this host only)."""
        return {}


@dataclass(frozen=True)
class ExecResult:
    """A command run inside an instance: its exit code (124: it ran past its time) and its output (bounded)."""

    exit_code: int
    output: str


class BwrapExecutor(Executor):
    """Runs each instance under bubblewrap via a detached runner process.

    A runner that disappears without writing ``exit_code`` (SIGKILL, OOM
    killer, host crash) is reported as exited with ``EXIT_RUNNER_LOST`` (137,
    i.e. "killed by SIGKILL"): its sandbox died with it (--die-with-parent),
    so 137 is also the truth about the user's processes.  The code is then
    written to ``exit_code`` so the answer never changes afterwards.
    """

    def health_check(self) -> Check:
        """Can this node contain an instance? Sets one up for real (see :mod:`.probe`)."""
        return probe.check(self.config, self.root)

    def reap_stale(self) -> list[str]:
        """Undo what runners killed before their cleanup left on the host (cgroups, namespaces, links)."""
        if not self.config.contained or not self.config.state_dir.exists():
            return []
        return Containment(self.config).reap_stale()

    def __init__(self, root: Path, config: SandboxConfig | None = None, *, runner_server: bool = True) -> None:
        # Resolved, because the runner's cmdline (our liveness check) holds it.
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = config or SandboxConfig()
        self._lock = threading.RLock()
        # Runners we spawned ourselves, kept only so they get reaped (no zombies).
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # by instance dir name
        self._keys: dict[str, tuple[str, int]] = {}  # instance dir name -> (task id, index), read once
        self._runners = forkserver.Client(self.root) if runner_server and _RUNNER_SERVER else None

    def instance_dir(self, task_id: str, index: int) -> Path:
        return InstancePaths.under(self.root, task_id, index).dir

    def start(self, spec: InstanceSpec) -> None:
        paths = InstancePaths.under(self.root, spec.task_id, spec.instance_index)
        paths.dir.mkdir(parents=True, exist_ok=True)
        # The file lock makes check-then-spawn atomic across agent processes
        # (an old agent not quite dead and a new one), not only across threads.
        with self._lock, _file_lock(paths.dir / ".lock"):
            if self._status(paths).state != "absent":
                return
            # Root's, and only root's: the sandbox sees its parts through binds, never this directory.
            os.chmod(paths.dir, 0o700)
            for d in (paths.code, paths.input_config, paths.output, paths.summary, paths.model):
                d.mkdir(parents=True, exist_ok=True)
            write_atomic(paths.hyperparameters, json.dumps(spec.hyperparameters))
            if spec.files:
                paths.files.mkdir(mode=0o755, exist_ok=True)
                for i, target in enumerate(sorted(spec.files)):
                    write_atomic(paths.files / f"f{i}", spec.files[target])
                    os.chmod(paths.files / f"f{i}", 0o644)
            write_atomic(paths.sandbox, self.config.to_json())
            write_atomic(paths.spec, spec.to_json())
            paths.stop_requested.unlink(missing_ok=True)
            pid = self._spawn(paths)
            # The runner writes this too; writing it here closes the window in
            # which the instance would look "absent" to a concurrent status().
            write_atomic(paths.runner_pid, str(pid))

    def _spawn(self, paths: InstancePaths) -> int:
        """Start the instance's runner, detached; its pid. Forked by the root's runner server when it can
        be (cheap), else a fresh ``python -m`` (the same runner)."""
        if self._runners is not None:
            try:
                return self._runners.spawn(paths.dir)
            except OSError as exc:
                log.warning("runner server unavailable (%s): starting the runner as a process of its own", exc)
        with open(paths.runner_err, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", RUNNER_MODULE, str(paths.dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=paths.dir,
                start_new_session=True,  # out of our session: survives our death
            )
        self._children[paths.dir.name] = proc
        return proc.pid

    def status(self, task_id: str, index: int) -> InstanceStatus:
        return self._status(InstancePaths.under(self.root, task_id, index))

    def stop(self, task_id: str, index: int) -> None:
        paths = InstancePaths.under(self.root, task_id, index)
        st = self._status(paths)
        if st.state != "running" or st.pid is None:
            return
        # File first, then signal: a runner still starting up checks the file
        # after installing its handler, so the request cannot fall in between.
        paths.stop_requested.touch()
        # A runner that has not installed its handler yet (Python still starting:
        # we write runner.pid right after spawning it) would die of the signal
        # without recording an exit code; it will find the file instead.
        if not _catches_sigterm(st.pid):
            return
        try:
            os.kill(st.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # exited meanwhile; the next status() will say so

    def list_instances(self) -> list[tuple[str, int]]:
        found = []
        names = sorted(e.name for e in os.scandir(self.root))
        for name in names:
            if (key := self._keys.get(name)) is None:
                try:
                    spec = InstanceSpec.from_json((self.root / name / "spec.json").read_text())
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # not an instance dir, or one whose start never got far
                if name != f"{spec.task_id}-{spec.instance_index}":
                    continue
                # A directory's spec names the same instance for as long as the directory exists.
                key = self._keys[name] = (spec.task_id, spec.instance_index)
            found.append(key)
        with self._lock:
            for gone in self._keys.keys() - set(names):
                self._keys.pop(gone, None)
        return found

    def log_path(self, task_id: str, index: int) -> Path:
        return InstancePaths.under(self.root, task_id, index).log

    def remove(self, task_id: str, index: int) -> None:
        paths = InstancePaths.under(self.root, task_id, index)
        with self._lock:
            if self._status(paths).state == "running":
                raise RuntimeError(f"instance {paths.dir.name} is running; stop it first")
            if paths.dir.exists():
                shutil.rmtree(paths.dir)
            self._children.pop(paths.dir.name, None)

    def exec(self, task_id: str, index: int, argv: list[str], timeout: float) -> ExecResult:
        paths = InstancePaths.under(self.root, task_id, index)
        if not argv or self._status(paths).state != "running" or not paths.enter_plan.exists():
            return ExecResult(EXIT_EXEC_TIMEOUT if argv else 2, "the instance is not running")
        proc = subprocess.Popen(enter_argv(paths, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return ExecResult(EXIT_EXEC_TIMEOUT, f"timed out after {timeout:g}s")
        code = proc.returncode
        return ExecResult(128 - code if code < 0 else code, out[-_EXEC_OUTPUT_MAX:].decode("utf-8", "replace"))

    def address(self, task_id: str, index: int) -> str | None:
        paths = InstancePaths.under(self.root, task_id, index)
        return paths.read_text(paths.address)

    def published(self, task_id: str, index: int) -> dict[int, str]:
        paths = InstancePaths.under(self.root, task_id, index)
        try:
            return {int(k): str(v) for k, v in json.loads(paths.read_text(paths.published) or "{}").items()}
        except (ValueError, AttributeError):
            return {}

    def _status(self, paths: InstancePaths) -> InstanceStatus:
        self._reap()
        code = paths.read_int(paths.exit_code)
        pid = paths.read_int(paths.runner_pid)
        if code is not None:
            return InstanceStatus("exited", code, pid, paths.read_text(paths.exit_reason))
        if pid is None:
            return InstanceStatus("absent")
        if self._own_child_running(pid) or _runner_alive(pid, paths.dir):
            return InstanceStatus("running", None, pid)
        # It may have written exit_code and exited since our first look.
        code = paths.read_int(paths.exit_code)
        if code is not None:
            return InstanceStatus("exited", code, pid, paths.read_text(paths.exit_reason))
        return self._mark_lost(paths, pid)

    def _own_child_running(self, pid: int) -> bool:
        """A runner this executor spawned and has not reaped is alive, whatever its command line says:
        between fork and exec it still shows the agent's own, and must not be taken for lost."""
        with self._lock:
            return any(p.pid == pid and p.poll() is None for p in self._children.values())

    def _mark_lost(self, paths: InstancePaths, pid: int) -> InstanceStatus:
        line = (
            f"instance runner (pid {pid}) is gone without recording an exit code "
            f"(see runner.err); reporting {EXIT_RUNNER_LOST}"
        )
        record = {"ts_ms": int(time.time() * 1000), "stream": "platform", "line": line}
        with open(paths.log, "a") as f:
            f.write(json.dumps(record) + "\n")
        write_atomic(paths.exit_code, str(EXIT_RUNNER_LOST))
        # A runner killed a moment ago may still be exiting: its cmdline is already empty (so it is
        # not "alive" above) while the kernel has not made it a zombie yet, and its lease still names
        # a live owner. Wait (briefly) for the death the lease can see, or the reap below skips it.
        deadline = time.monotonic() + _LOST_RUNNER_EXIT_WAIT_S
        while process_start(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        try:  # its sandbox died with it (--die-with-parent); what it had set up on the host must go too
            self.reap_stale()
        except Exception:  # noqa: BLE001 - the next reap (agent start, any setup) retries
            log.exception("cleaning up after the lost runner of %s failed", paths.dir.name)
        return InstanceStatus("exited", EXIT_RUNNER_LOST, pid)

    def _reap(self) -> None:
        with self._lock:
            for key, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[key]
            if self._runners is not None:
                self._runners.reap()


def _runner_alive(pid: int, instance_dir: Path) -> bool:
    """Is ``pid`` the runner of ``instance_dir``?  Pids get reused, so check cmdline: the runner's own
    form names the directory; one forked by the runner server has the server's and works in the directory.

    A zombie has an empty cmdline (and no cwd) and correctly counts as dead.
    """
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if any(RUNNER_MODULE.encode() == a or a.endswith(_RUNNER_SCRIPT) for a in args):
        return os.fsencode(instance_dir) in args
    if _FORKSERVER in args:
        try:
            return os.readlink(f"/proc/{pid}/cwd") == str(instance_dir)
        except OSError:
            return False
    return False


def _catches_sigterm(pid: int) -> bool:
    """Has ``pid`` installed a SIGTERM handler (the SigCgt mask of /proc/<pid>/status)?"""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_log(path: Path, offset: int = 0, max_bytes: int = 1 << 20) -> tuple[list[dict[str, Any]], int]:
    """Records appended to a log.jsonl since ``offset``, and the offset to resume at.

    Only complete lines are returned: a line still being written is left for
    the next call.  ``max_bytes`` bounds one read, but a single longer line is
    still returned whole so that a tailer always makes progress.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return [], offset
    with f:
        f.seek(offset)
        buf = f.read(max_bytes)
        while b"\n" not in buf and (more := f.read(max_bytes)):
            buf += more
    end = buf.rfind(b"\n")
    if end < 0:
        return [], offset
    records: list[dict[str, Any]] = []
    for raw in buf[:end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw))
        except ValueError:
            # Only a writer killed mid-line can cause this; keep a trace of it
            # rather than silently dropping output.
            text = raw.decode("utf-8", errors="replace")
            records.append({"ts_ms": 0, "stream": "platform", "line": f"corrupt log line: {text}"})
    return records, offset + end + 1


def last_record(path: Path, stream: str, tail_bytes: int = 1 << 16) -> dict[str, Any] | None:
    """The newest record of ``stream`` among the last ``tail_bytes`` of a log.jsonl (e.g. the runner's
    latest usage sample, stream "metrics"), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for raw in reversed(lines):
        if stream.encode() not in raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("stream") == stream:
            return record
    return None
