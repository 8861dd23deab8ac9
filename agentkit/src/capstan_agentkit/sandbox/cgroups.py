"""Per-instance control groups: memory, CPU and process-count limits, on cgroup v1 or v2.

One interface (:class:`Cgroups`), two implementations, and :func:`detect` to choose: current
distributions mount the unified (v2) hierarchy at /sys/fs/cgroup; older ones, and some VMs, mount one
v1 hierarchy per controller under it. Each instance gets ``<parent>/<name>`` (in every v1 controller
it needs). The launcher writes its own pid into :meth:`Cgroups.procs_files` before it execs anything,
so nothing the user runs is ever outside the limits.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from .config import Limits

_V1_CONTROLLERS = ("memory", "cpu", "pids")
_V2_CONTROLLERS = ("memory", "cpu", "pids")
_EMPTY_WAIT_S = 5.0


class Cgroups(ABC):
    """The cgroups of a node's instances, all under ``parent`` of the hierarchy mounted at ``root``."""

    version: int

    def __init__(self, root: Path, parent: str) -> None:
        self.root, self.parent = Path(root), parent

    @abstractmethod
    def missing(self) -> str | None:
        """What this node lacks to limit instances this way, or None when nothing is missing."""

    @abstractmethod
    def dirs(self, name: str) -> list[Path]:
        """The directories of cgroup ``name`` (one per v1 controller; one in v2)."""

    @abstractmethod
    def create(self, name: str, limits: Limits) -> None:
        """Create cgroup ``name`` with ``limits`` applied (an existing one is reused and re-limited)."""

    @abstractmethod
    def oom_kills(self, name: str) -> int:
        """How many processes the kernel killed in ``name`` for exceeding its memory limit."""

    @abstractmethod
    def usage(self, name: str) -> tuple[int, int]:
        """(CPU time used, in nanoseconds, since the cgroup was made; memory in use now, in bytes)."""

    def procs_files(self, name: str) -> list[Path]:
        """Where a process writes ``0`` to move itself into the cgroup."""
        return [d / "cgroup.procs" for d in self.dirs(name)]

    def exists(self, name: str) -> bool:
        return any(d.is_dir() for d in self.dirs(name))

    def pids(self, name: str) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files(name):
            with contextlib.suppress(FileNotFoundError):
                found.update(int(x) for x in f.read_text().split())
        return found

    def kill(self, name: str) -> None:
        """SIGKILL every process in the cgroup, until it is empty (or a few seconds have passed)."""
        deadline = time.monotonic() + _EMPTY_WAIT_S
        while (pids := self.pids(name)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self, name: str) -> None:
        """Kill what is left in the cgroup and delete it, then its parent if no other cgroup is there."""
        if self.pids(name):  # an empty cgroup stays empty: nothing but root can move a process in
            self.kill(name)
        for d in self.dirs(name):
            _rmdir(d, retry=True)
        for p in self._parent_dirs():
            _rmdir(p, retry=False)  # another instance's cgroup there: keep it

    def names(self) -> set[str]:
        """The cgroups that exist under the parent (to find those a killed runner left)."""
        found: set[str] = set()
        for p in self._parent_dirs():
            with contextlib.suppress(FileNotFoundError):
                found.update(e.name for e in os.scandir(p) if e.is_dir(follow_symlinks=False))
        return found

    @abstractmethod
    def _parent_dirs(self) -> list[Path]: ...


@functools.lru_cache(maxsize=8)
def _v1_controllers(root: Path) -> tuple[str, ...]:
    """Looked at once per process (the mounts do not change under a running node)."""
    acct, cpu = root / "cpuacct", root / "cpu"
    separate = acct.is_dir() and cpu.is_dir() and acct.resolve() != cpu.resolve()
    return (*_V1_CONTROLLERS, "cpuacct") if separate else _V1_CONTROLLERS


class CgroupsV1(Cgroups):
    """One hierarchy per controller: ``<root>/{memory,cpu,pids}/<parent>/<name>``."""

    version = 1

    def missing(self) -> str | None:
        probes = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "pids": "cgroup.procs"}
        for controller, probe in probes.items():
            if not (self.root / controller / probe).exists():
                return f"cgroup v1 controller '{controller}' is not mounted at {self.root / controller}"
        return None

    def _controllers(self) -> tuple[str, ...]:
        """memory, cpu and pids; cpuacct too when it is a hierarchy of its own (it counts CPU time)."""
        return _v1_controllers(self.root)

    def dirs(self, name: str) -> list[Path]:
        return [self.root / c / self.parent / name for c in self._controllers()]

    def _parent_dirs(self) -> list[Path]:
        return [self.root / c / self.parent for c in self._controllers()]

    def usage(self, name: str) -> tuple[int, int]:
        mem = self.root / "memory" / self.parent / name
        return (_read_int(self.root / "cpuacct" / self.parent / name / "cpuacct.usage"),
                _read_int(mem / "memory.usage_in_bytes") - _counter(mem / "memory.stat", "total_inactive_file"))

    def create(self, name: str, limits: Limits) -> None:
        for d in self.dirs(name)[3:]:
            d.mkdir(parents=True, exist_ok=True)
        mem, cpu, pids = self.dirs(name)[:3]
        for d in (mem, cpu, pids):
            d.mkdir(parents=True, exist_ok=True)
        if limits.memory_bytes:
            _write(mem / "memory.limit_in_bytes", limits.memory_bytes)
            # memory+swap capped at the same figure: the limit cannot be stretched with swap.
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _write(mem / "memory.memsw.limit_in_bytes", limits.memory_bytes)
            else:  # swap accounting off (swapaccount=0): at least make the kernel prefer not to swap
                _write(mem / "memory.swappiness", 0)
        if limits.cpu_quota_us:
            _write(cpu / "cpu.cfs_period_us", limits.cpu_period_us)
            _limit_cpu(cpu / "cpu.cfs_burst_us", min(limits.cpu_burst_us, limits.cpu_quota_us),
                       lambda: _write(cpu / "cpu.cfs_quota_us", limits.cpu_quota_us))
        if limits.pids_max:
            _write(pids / "pids.max", limits.pids_max)

    def oom_kills(self, name: str) -> int:
        return _counter(self.dirs(name)[0] / "memory.oom_control", "oom_kill")


class CgroupsV2(Cgroups):
    """The unified hierarchy: ``<root>/<parent>/<name>``, controllers enabled down the path."""

    version = 2

    def missing(self) -> str | None:
        try:
            available = (self.root / "cgroup.controllers").read_text().split()
        except OSError:
            return f"no cgroup v2 hierarchy at {self.root}"
        lacking = [c for c in _V2_CONTROLLERS if c not in available]
        if lacking:
            return f"cgroup v2 at {self.root} lacks the {', '.join(lacking)} controller(s)"
        return None

    def dirs(self, name: str) -> list[Path]:
        return [self.root / self.parent / name]

    def _parent_dirs(self) -> list[Path]:
        return [self.root / self.parent]

    def create(self, name: str, limits: Limits) -> None:
        parent = self.root / self.parent
        enable = " ".join(f"+{c}" for c in _V2_CONTROLLERS)
        # A child can only use a controller its parent enables for it; the parent holds no processes,
        # as v2 requires of a cgroup that enables controllers for its children.
        _write(self.root / "cgroup.subtree_control", enable)
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", enable)
        d = parent / name
        d.mkdir(exist_ok=True)
        if limits.memory_bytes:
            _write(d / "memory.max", limits.memory_bytes)
            _write_optional(d / "memory.swap.max", 0)  # no swap beyond the limit
            _write_optional(d / "memory.oom.group", 1)  # an OOM kill ends the whole instance
        if limits.cpu_quota_us:
            _limit_cpu(d / "cpu.max.burst", min(limits.cpu_burst_us, limits.cpu_quota_us),
                       lambda: _write(d / "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}"))
        if limits.pids_max:
            _write(d / "pids.max", limits.pids_max)

    def oom_kills(self, name: str) -> int:
        return _counter(self.dirs(name)[0] / "memory.events", "oom_kill")

    def usage(self, name: str) -> tuple[int, int]:
        d = self.dirs(name)[0]
        return (_counter(d / "cpu.stat", "usage_usec") * 1000,
                _read_int(d / "memory.current") - _counter(d / "memory.stat", "inactive_file"))

    def kill(self, name: str) -> None:
        # cgroup.kill (Linux 5.14+) kills everything at once, forks racing with us included.
        if self.dirs(name)[0].is_dir():
            _write_optional(self.dirs(name)[0] / "cgroup.kill", 1)
        super().kill(name)


def detect(root: Path, parent: str) -> Cgroups:
    """The implementation for this node: v2 if its hierarchy has the controllers, else v1.

    Raises ``RuntimeError`` naming what is missing when neither can limit memory, CPU and processes.
    """
    v2 = CgroupsV2(root, parent)
    if (v2_missing := v2.missing()) is None:
        return v2
    v1 = CgroupsV1(root, parent)
    if (v1_missing := v1.missing()) is None:
        return v1
    raise RuntimeError(f"cannot limit instances with cgroups: {v2_missing}; {v1_missing}")


def for_version(version: int, root: Path, parent: str) -> Cgroups:
    """The implementation a lease recorded (its cgroups are removed the way they were made)."""
    return (CgroupsV2 if version == 2 else CgroupsV1)(root, parent)


def _write(path: Path, value: object) -> None:
    # One write() per value, as cgroupfs expects. O_CREAT|O_TRUNC are no-ops on a real knob, and a knob
    # the kernel does not have fails with EACCES; in a fake tree (tests) they create the file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _limit_cpu(burst_file: Path, burst_us: int, write_quota: Callable[[], None]) -> None:
    """The quota, then the burst (at most the quota: kernels refuse more), then the quota again: each write
    fills the cgroup's run time up to quota + burst, so a new instance starts with its burst saved up. The
    burst is best effort (kernels before 5.14 have none); the quota never fails because of it."""
    write_quota()
    if burst_us:
        with contextlib.suppress(OSError):
            _write(burst_file, burst_us)
            write_quota()


def _write_optional(path: Path, value: object) -> None:
    """A knob some kernels lack (memory.swap.max without swap accounting, cgroup.kill before 5.14)."""
    try:
        _write(path, value)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
            raise


def _counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    return 0


def _read_int(path: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return 0


def _rmdir(path: Path, *, retry: bool) -> None:
    # A cgroup whose last process has just exited can be busy for a moment while the kernel lets go.
    deadline = time.monotonic() + (_EMPTY_WAIT_S if retry else 0)
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() >= deadline:
                if retry:
                    raise
                return
            time.sleep(0.02)
