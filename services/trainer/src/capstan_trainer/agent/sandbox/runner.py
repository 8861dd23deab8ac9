"""The instance runner: one detached process per instance, owning its sandbox.

Started by the executor in its own session, so it outlives the agent (even a
``kill -9`` of it).  It runs the user's command under bubblewrap, copies the
sandbox's stdout/stderr into ``log.jsonl``, turns SIGTERM into a graceful stop
of the sandbox, and finally records ``exit_code``.  Usage::

    python -m capstan_trainer.agent.sandbox.runner <instance_dir>
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from .spec import (
    EXIT_RUNNER_ERROR,
    EXIT_SANDBOX_UNAVAILABLE,
    EXIT_STOPPED_BEFORE_START,
    RUNNER_MODULE,
    InstancePaths,
    InstanceSpec,
    write_atomic,
)

_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_POLL_SECONDS = 0.1
_MAX_LINE_BYTES = 64 * 1024  # a newline-less stream (progress bars) still gets logged
_PUMP_JOIN_SECONDS = 5.0
# sitecustomize.py that applies CAPSTAN_GPU_MEMORY_FRACTION to PyTorch (see pyhook/sitecustomize.py),
# bound read-only into the sandbox and put first on PYTHONPATH when an instance holds part of a card.
PYHOOK_DIR = Path(__file__).resolve().parent / "pyhook"
PYHOOK_MOUNT = "/opt/capstan/pyhook"
GPU_FRACTION_ENV = "CAPSTAN_GPU_MEMORY_FRACTION"


class LogWriter:
    """Appends ``{"ts_ms", "stream", "line"}`` records to log.jsonl, one per line."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - lives as long as the runner
        self._lock = threading.Lock()

    def write(self, stream: str, line: str) -> None:
        record = {"ts_ms": int(time.time() * 1000), "stream": stream, "line": line}
        data = (json.dumps(record) + "\n").encode()
        with self._lock:
            try:
                # One write per record and a flush, so tailers never wait on our buffer.
                self._file.write(data)
                self._file.flush()
            except OSError:
                # A full disk must not stall the pumps: the sandbox would block
                # on a full pipe.  Dropping log lines is the lesser evil.
                pass

    def platform(self, line: str) -> None:
        self.write("platform", line)


def _python_prefixes() -> list[str]:
    """Host directories the user's ``python3`` needs that system binds miss."""
    raw = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    raw |= {os.path.realpath(p) for p in raw}  # a symlinked prefix needs its target too
    keep: list[str] = []
    for p in sorted(raw):
        if p == "/" or not os.path.isdir(p):
            continue
        if any(p == d or p.startswith(d + "/") for d in _SYSTEM_DIRS):
            continue  # already visible through the system binds
        if any(p.startswith(k + "/") for k in keep):
            continue  # nested in a prefix we bind anyway (sorted: parents come first)
        keep.append(p)
    return keep


def _sandbox_path() -> str:
    # The runner's own environment first: a venv is where the node's ML
    # packages live, and its python3 is what "python3" should mean inside.
    python_bins = dict.fromkeys(f"{p}/bin" for p in (sys.prefix, sys.base_prefix))
    return ":".join([*python_bins, _SYSTEM_PATH])


def build_bwrap_argv(bwrap: str, spec: InstanceSpec, paths: InstancePaths) -> list[str]:
    """The full bwrap command line; an argv list, so no host shell ever parses user text."""
    argv = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    # As root, bwrap keeps *all* capabilities unless told otherwise; user code
    # must not be able to mount, mknod or touch the (shared) host network config.
    argv += ["--cap-drop", "ALL"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):  # merged-/usr hosts: /bin -> usr/bin etc.
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    # uid 0 keeps write access to /proc/sys and /proc/sysrq-trigger even without
    # capabilities, and bwrap does not cover those for root: make them read-only.
    argv += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    argv += ["--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    argv += ["--dev", "/dev", "--tmpfs", "/tmp"]
    for p in _python_prefixes():  # after /tmp, so a prefix under /tmp is not hidden
        argv += ["--ro-bind", p, p]
    argv += ["--dir", "/opt/ml", "--dir", "/opt/ml/input"]
    argv += ["--bind", str(paths.code), "/opt/ml/code"]
    argv += ["--bind", str(paths.output), "/opt/ml/output"]
    argv += ["--bind", str(paths.model), "/opt/ml/model"]
    argv += ["--ro-bind", str(paths.input_config), "/opt/ml/input/config"]
    env = {
        "PATH": _sandbox_path(),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # so the user's prints reach the log as they happen
        **spec.env,
    }
    if spec.env.get(GPU_FRACTION_ENV) and PYHOOK_DIR.is_dir():
        argv += ["--ro-bind", str(PYHOOK_DIR), PYHOOK_MOUNT]
        env["PYTHONPATH"] = ":".join(p for p in (PYHOOK_MOUNT, spec.env.get("PYTHONPATH", "")) if p)
    argv += ["--chdir", "/opt/ml/code", "--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    # No --new-session: the sandbox must stay in the process group we signal on stop.
    return [*argv, "--", "/bin/sh", "-c", spec.command]


def _pump(stream: IO[bytes], name: str, log: LogWriter) -> None:
    """Copy one pipe into the log, line by line, until the sandbox closes it."""
    with stream:
        while chunk := stream.readline(_MAX_LINE_BYTES):
            if chunk.endswith(b"\n"):
                chunk = chunk[:-1].removesuffix(b"\r")
            log.write(name, chunk.decode("utf-8", errors="replace"))


def _process_group_members(pgid: int) -> list[int]:
    """Pids (host view) whose process group is ``pgid``, from /proc/<pid>/stat."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path("/proc", entry.name, "stat").read_bytes()
        except OSError:
            continue  # exited while we looked
        fields = stat[stat.rfind(b")") + 2 :].split()  # comm may contain spaces and ')'
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _terminate_sandbox(bwrap_pid: int) -> None:
    """SIGTERM everything in the sandbox's process group except bwrap itself.

    bwrap does not forward signals: if the outer bwrap died of SIGTERM, its
    --die-with-parent child (the namespace init) would be SIGKILLed at once and
    the user would get no grace period.  The namespace init ignores SIGTERM
    (pid 1 without a handler), so the user's processes are what receive it.
    """
    for pid in _process_group_members(bwrap_pid):
        if pid != bwrap_pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run(paths: InstancePaths, log: LogWriter, stop: threading.Event) -> int:
    """Run the sandbox to completion and return the instance's exit code."""
    spec = InstanceSpec.from_json(paths.spec.read_text())
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        log.platform("bwrap not found on PATH; refusing to run the instance unsandboxed")
        return EXIT_SANDBOX_UNAVAILABLE
    if stop.is_set() or paths.stop_requested.exists():
        log.platform("stop requested before the instance started")
        return EXIT_STOPPED_BEFORE_START
    # Spawned from the main thread on purpose: --die-with-parent uses
    # PR_SET_PDEATHSIG, which fires when the *thread* that forked bwrap exits.
    try:
        proc = subprocess.Popen(
            build_bwrap_argv(bwrap, spec, paths),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group, so stop can find the whole tree
        )
    except OSError as exc:  # e.g. bwrap removed or not executable since which()
        log.platform(f"cannot start bwrap ({exc}); refusing to run the instance unsandboxed")
        return EXIT_SANDBOX_UNAVAILABLE
    log.platform(f"instance started (sandbox pid {proc.pid})")
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", log), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", log), daemon=True),
    ]
    for t in pumps:
        t.start()
    kill_at: float | None = None
    try:
        while True:
            try:
                proc.wait(timeout=_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            # The stop_requested file backs up the signal (e.g. if it was lost).
            if kill_at is None and (stop.is_set() or paths.stop_requested.exists()):
                log.platform(f"stop requested: SIGTERM, {spec.stop_grace_seconds}s grace period")
                _terminate_sandbox(proc.pid)
                kill_at = time.monotonic() + spec.stop_grace_seconds
            elif kill_at is not None and time.monotonic() >= kill_at:
                log.platform("grace period over: SIGKILL")
                # Killing the namespace init tears down every process inside it.
                os.killpg(proc.pid, signal.SIGKILL)
                kill_at = float("inf")
    finally:
        if proc.poll() is None:  # we are failing: never leave an unsupervised sandbox
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for t in pumps:
        t.join(_PUMP_JOIN_SECONDS)
    return _exit_code(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {RUNNER_MODULE} <instance_dir>", file=sys.stderr)
        return 2
    paths = InstancePaths(Path(args[0]).resolve())
    stop = threading.Event()
    # Handlers go in before runner.pid is written: whoever reads the pid may
    # signal us right away, and the default action would lose the exit code.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    write_atomic(paths.runner_pid, str(os.getpid()))
    log = LogWriter(paths.log)
    error: Exception | None = None
    try:
        code = run(paths, log, stop)
    except Exception as exc:  # noqa: BLE001 - any failure must still end in an exit_code
        error, code = exc, EXIT_RUNNER_ERROR
        log.platform(f"instance runner failed: {exc!r}")
    log.platform(f"exit code {code}")
    # Last of all: once exit_code exists the instance is final, log included.
    write_atomic(paths.exit_code, str(code))
    if error is not None:
        raise error  # the traceback lands in runner.err for whoever debugs it
    return 0


if __name__ == "__main__":
    sys.exit(main())
