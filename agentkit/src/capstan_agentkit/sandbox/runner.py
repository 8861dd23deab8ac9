"""The instance runner: one detached process per instance, owning its sandbox.

Started by the executor in its own session, so it outlives the agent (even a
``kill -9`` of it).  It contains the instance (:mod:`.containment`: cgroup,
network namespace, uid), runs the user's command under bubblewrap through the
launcher, copies the sandbox's stdout/stderr into ``log.jsonl``, turns SIGTERM
into a graceful stop of the sandbox, ends an instance that ran out of memory,
undoes the containment and finally records ``exit_reason`` (when it knows one)
and ``exit_code``.  Usage::

    python -m capstan_agentkit.sandbox.runner <instance_dir>
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO

from . import launch
from .argv import View, build_bwrap_argv, sandbox_path
from .config import Limits, SandboxConfig, describe_memory, thread_env
from .containment import Containment, Sandbox
from .gpustats import gpu_samples
from .leases import Lease
from .spec import (
    EXIT_RUNNER_ERROR,
    EXIT_SANDBOX_UNAVAILABLE,
    EXIT_STOPPED_BEFORE_START,
    METRICS_STREAM,
    RUNNER_MODULE,
    InstancePaths,
    InstanceSpec,
    enter_argv,
    write_atomic,
)

_POLL_SECONDS = 0.1
_MAX_LINE_BYTES = 64 * 1024  # a newline-less stream (progress bars) still gets logged
_PUMP_JOIN_SECONDS = 5.0
_HANDOVER_S = 10.0  # how long the runner waits for the child that releases its lease to take it over
# How often a contained instance's cgroup is sampled (CPU, memory): a "metrics" record in its log.
METRICS_SECONDS = float(os.environ.get("CAPSTAN_SANDBOX_METRICS_S", "5"))



class Sampler:
    """Per-instance usage over time, from the instance's cgroup (SPEC §0 "Monitoring")."""

    def __init__(self, sandbox: Sandbox, spec: InstanceSpec, log: LogWriter) -> None:
        self.sandbox, self.spec, self.log = sandbox, spec, log
        self.last: tuple[float, int] | None = None
        self.next_at = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + METRICS_SECONDS
        cpu_ns, memory = self.sandbox.usage()
        if self.last is not None and now > self.last[0]:
            cores = max(0.0, (cpu_ns - self.last[1]) / 1e9 / (now - self.last[0]))
            limit = self.spec.memory_gib * (1 << 30)
            sample: dict[str, object] = {"cpu_cores": round(cores, 3),
                      "cpu_percent": round(100 * cores / self.spec.cpu, 1) if self.spec.cpu else None,
                      "memory_bytes": max(0, memory),
                      "memory_percent": round(100 * max(0, memory) / limit, 1) if limit else None}
            if gpus := gpu_samples(self.spec.env.get("CUDA_VISIBLE_DEVICES", "")):
                sample["gpus"] = gpus
            self.log.write(METRICS_STREAM, json.dumps(sample))
        self.last = (now, cpu_ns)


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


def _exit_waiter(proc: subprocess.Popen[bytes]) -> Callable[[float], bool]:
    """``exited(timeout)``: whether the sandbox has exited, waiting at most ``timeout`` seconds for it. A pidfd
    answers the moment it exits (``Popen.wait`` with a timeout sleeps in steps and may oversleep by 50 ms)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfds (an old kernel): poll
        fd = None

    def exited(timeout: float) -> bool:
        if fd is not None:
            select.select([fd], [], [], timeout)
            if proc.poll() is not None:
                os.close(fd)
                return True
            return False
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    return exited


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run(paths: InstancePaths, log: LogWriter, stop: threading.Event,
        after: list[Callable[[], None]] | None = None) -> int:
    """Run the sandbox to completion and return the instance's exit code. ``after`` gets what is left to
    undo once the exit code is recorded (the instance's namespace: slow, and nothing of it runs any more)."""
    spec = InstanceSpec.from_json(paths.spec.read_text())
    config = _config(paths)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        log.platform("bwrap not found on PATH; refusing to run the instance unsandboxed")
        return EXIT_SANDBOX_UNAVAILABLE
    if stop.is_set() or paths.stop_requested.exists():
        log.platform("stop requested before the instance started")
        return EXIT_STOPPED_BEFORE_START
    if not config.contained:
        log.platform("WARNING: this node runs instances UNCONTAINED (CAPSTAN_SANDBOX_UNCONTAINED=true): "
                     "no network isolation, no resource limits, root inside the sandbox")
        view = View(network="none" if spec.network == "none" else "host", env=thread_env(spec.cpu, spec.env))
        plan = _enter_plan(spec, view, 0, [])
        return _supervise(build_bwrap_argv(bwrap, spec, paths, view), spec, paths, log, stop, None, plan)
    containment = Containment(config)
    try:
        sandbox = containment.setup(spec, paths, os.getpid())
    except Exception as exc:  # noqa: BLE001 - whatever is missing, the instance must fail saying so
        _record_reason(paths, log, f"sandbox could not be set up: {exc}")
        return EXIT_SANDBOX_UNAVAILABLE
    try:
        argv = build_bwrap_argv(bwrap, spec, paths, sandbox.view)
        # The launcher's steps run in bubblewrap's own forked child (no interpreter to start for them).
        prepare = functools.partial(launch.in_child, sandbox.launch_plan())
        limits = Limits.of(spec.cpu, spec.memory_gib, config)
        memory = describe_memory(spec.memory_gib) if spec.memory_gib else "no limit"
        cpu = f"{spec.cpu:g}" if spec.cpu else "no limit"
        log.platform(f"contained: uid {sandbox.uid}, memory {memory}, cpu {cpu}, "
                     f"pids {limits.pids_max}, network {spec.network}" + (f" {sandbox.address}" if sandbox.address else ""))
        plan = _enter_plan(spec, sandbox.view, sandbox.uid,
                           [str(p) for p in sandbox.cgroups.procs_files(sandbox.lease.cgroup_name)])
        code = _supervise(argv, spec, paths, log, stop, sandbox, plan, sandbox.address, prepare)
        if (reason := sandbox.exit_reason()) is not None:
            _record_reason(paths, log, reason)
        return code
    finally:
        try:
            containment.end(sandbox.lease)
        except Exception as exc:  # noqa: BLE001 - the lease stays; it is reaped once this runner is gone
            log.platform(f"sandbox cleanup failed (retried later): {exc}")
        else:
            if after is None:
                containment.release(sandbox.lease)
            else:
                after.append(functools.partial(_release_detached, containment, sandbox.lease))


def _release_detached(containment: Containment, lease: Lease) -> None:
    """Release the lease in a child that takes it over, so the runner exits at once: its exit is what
    tells the agent the instance has ended (the namespace and bridge deletions take ~50 ms each)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            containment.adopt(lease, os.getpid())
            os.close(w)  # taken over: the runner may go
            containment.release(lease)
        except BaseException:  # noqa: BLE001 - the lease stays; it is reaped once this process is gone
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    select.select([r], [], [], _HANDOVER_S)  # readable (EOF) once the child owns the lease, or died
    os.close(r)


def _enter_plan(spec: InstanceSpec, view: View, uid: int, cgroup_procs: list[str]) -> dict[str, object]:
    """What ``enter.py`` needs to run a command inside this sandbox (the sandbox's pid is added once it runs)."""
    env = {"PATH": sandbox_path(), "HOME": "/tmp", "LANG": "C.UTF-8", **spec.env, **view.env}
    return {"uid": uid, "cgroup_procs": cgroup_procs, "env": env}


class _PreStop:
    """The instance's pre-stop command, run inside its sandbox when a stop is asked for, before SIGTERM;
    it may take the grace period at most (then it is killed and the stop goes on)."""

    def __init__(self, spec: InstanceSpec, paths: InstancePaths, log: LogWriter) -> None:
        self.spec, self.paths, self.log = spec, paths, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.deadline = 0.0

    def start(self) -> bool:
        """Start it; False when there is none (or it cannot start): go on with SIGTERM at once."""
        if not self.spec.pre_stop:
            return False
        self.log.platform(f"stop requested: pre-stop {list(self.spec.pre_stop)} (at most {self.spec.stop_grace_seconds}s)")
        try:
            self.proc = subprocess.Popen(enter_argv(self.paths, self.spec.pre_stop), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self.log.platform(f"pre-stop could not start: {exc}")
            return False
        self.deadline = time.monotonic() + self.spec.stop_grace_seconds
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, "stdout", self.log), daemon=True).start()
        return True

    def done(self) -> bool:
        """Whether it has finished (or was killed for running past the grace period)."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None and time.monotonic() < self.deadline:
            return False
        if code is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.log.platform("pre-stop ran past the grace period: killed")
        else:
            self.log.platform(f"pre-stop exited with code {_exit_code(code)}")
        return True


def _config(paths: InstancePaths) -> SandboxConfig:
    """The policy the executor wrote; an instance started without one is contained by default."""
    try:
        return SandboxConfig.from_json(paths.sandbox.read_text())
    except FileNotFoundError:
        return SandboxConfig()


def _record_reason(paths: InstancePaths, log: LogWriter, reason: str) -> None:
    log.platform(reason)
    write_atomic(paths.exit_reason, reason)


def _supervise(
    argv: list[str], spec: InstanceSpec, paths: InstancePaths, log: LogWriter, stop: threading.Event,
    sandbox: Sandbox | None, enter_plan: dict[str, object], address: str | None = None,
    prepare: Callable[[], None] | None = None,
) -> int:
    if stop.is_set() or paths.stop_requested.exists():  # the setup took a moment: look again
        log.platform("stop requested before the instance started")
        return EXIT_STOPPED_BEFORE_START
    # Spawned from the main thread on purpose: --die-with-parent uses
    # PR_SET_PDEATHSIG, which fires when the *thread* that forked bwrap exits.
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group, so stop can find the whole tree
            preexec_fn=prepare,  # noqa: PLW1509 - the runner has no other thread yet (the pumps start below)
        )
    except OSError as exc:  # e.g. bwrap removed or not executable since which()
        log.platform(f"cannot start bwrap ({exc}); refusing to run the instance unsandboxed")
        return EXIT_SANDBOX_UNAVAILABLE
    log.platform(f"instance started (sandbox pid {proc.pid})")
    # How the platform runs a command inside it (exec probes, pre-stop), and where the host reaches it.
    write_atomic(paths.enter_plan, json.dumps({**enter_plan, "pid": proc.pid}))
    write_atomic(paths.address, address or "127.0.0.1")
    if sandbox is not None and sandbox.published:
        write_atomic(paths.published, json.dumps(sandbox.published))
    else:
        paths.published.unlink(missing_ok=True)  # an earlier run's
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", log), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", log), daemon=True),
    ]
    for t in pumps:
        t.start()
    kill_at: float | None = None
    pre_stop: _PreStop | None = None
    out_of_memory = False
    exited = _exit_waiter(proc)
    sampler = Sampler(sandbox, spec, log) if sandbox is not None else None
    try:
        while True:
            if exited(_POLL_SECONDS):
                break
            if sampler is not None:
                try:
                    sampler.tick()
                except OSError:
                    pass  # a cgroup file that vanished: the instance is ending
            if sandbox is not None and not out_of_memory and sandbox.oom_kills() > 0:
                # v1 kills one process and lets the rest run on; v2 (oom.group) kills them all. Either
                # way the instance is over: exceeding the limit ends it, the same on every node.
                out_of_memory = True
                log.platform(f"out of memory (limit {describe_memory(spec.memory_gib)}): ending the instance")
                os.killpg(proc.pid, signal.SIGKILL)
                sandbox.kill()
            # The stop_requested file backs up the signal (e.g. if it was lost).
            if kill_at is None and pre_stop is None and (stop.is_set() or paths.stop_requested.exists()):
                pre_stop = _PreStop(spec, paths, log)
                if not pre_stop.start():
                    kill_at = _sigterm(proc, spec, log)
            elif kill_at is None and pre_stop is not None and pre_stop.done():
                kill_at = _sigterm(proc, spec, log)
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


def _sigterm(proc: subprocess.Popen[bytes], spec: InstanceSpec, log: LogWriter) -> float:
    """SIGTERM to the user's processes; returns when the grace period ends (then SIGKILL)."""
    log.platform(f"stop requested: SIGTERM, {spec.stop_grace_seconds}s grace period")
    _terminate_sandbox(proc.pid)
    return time.monotonic() + spec.stop_grace_seconds


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
    after: list[Callable[[], None]] = []
    try:
        code = run(paths, log, stop, after)
    except Exception as exc:  # noqa: BLE001 - any failure must still end in an exit_code
        error, code = exc, EXIT_RUNNER_ERROR
        log.platform(f"instance runner failed: {exc!r}")
    log.platform(f"exit code {code}")
    # Once exit_code exists the instance is final, log included: what is left goes to runner.err only.
    write_atomic(paths.exit_code, str(code))
    for fn in after:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the lease stays; it is reaped once this runner is gone
            traceback.print_exc()
    if error is not None:
        raise error  # the traceback lands in runner.err for whoever debugs it
    return 0


if __name__ == "__main__":
    sys.exit(main())
