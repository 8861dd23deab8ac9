"""What one training-task instance runs, and where its state lives on disk.

The instance directory is the only channel between the agent (executor) and
the detached runner process, so its layout is defined once, here, and both
sides use :class:`InstancePaths`.  Everything in it is plain files so that a
restarted agent can pick up where a killed one left off.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capstan_core.network_modes import NETWORK_MODES

# Lives here, not in runner.py, so the package never imports the runner module
# (that would make ``python -m`` of it warn about a double import).
RUNNER_MODULE = "capstan_agentkit.sandbox.runner"
ENTER_SCRIPT = Path(__file__).resolve().parent / "enter.py"
METRICS_STREAM = "metrics"  # the runner's usage samples in an instance's log
EXIT_EXEC_TIMEOUT = 124  # a command run inside the sandbox (exec probe, pre-stop) ran past its time

# Exit codes the platform itself produces (the user's own codes pass through;
# death by signal N is reported as 128+N, as a shell would).
EXIT_SANDBOX_UNAVAILABLE = 127  # bwrap missing: we refuse to run unsandboxed
EXIT_RUNNER_ERROR = 125  # the runner itself failed (Docker uses 125 likewise)
EXIT_RUNNER_LOST = 137  # runner vanished without recording a code: as SIGKILL
EXIT_STOPPED_BEFORE_START = 143  # stop arrived before the sandbox started: as SIGTERM

# Task ids become directory names, so they must be a single safe path component.
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Mount:
    """A host path bound into the sandbox at ``target``. ``own``: the host path is the instance's own
    (under its directory), given to the instance's uid before the start; else it is bound as it is
    (a shared volume keeps its owners)."""

    source: str
    target: str
    readonly: bool = False
    own: bool = False

    def __post_init__(self) -> None:
        for p in (self.source, self.target):
            if not isinstance(p, str) or not p.startswith("/") or "\0" in p or ".." in p.split("/"):
                raise ValueError(f"mount paths must be absolute, without '..': {p!r}")


@dataclass(frozen=True)
class InstanceSpec:
    """One instance of a training task, as the agent was told to run it.

    ``command`` is a user-written shell script; it is executed *inside* the
    sandbox with ``/bin/sh -c`` and never interpreted on the host.
    """

    task_id: str
    instance_index: int
    command: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    stop_grace_seconds: int = 30
    cpu: float = 0.0  # the request is the limit (CPU quota, process count); 0: none
    memory_gib: float = 0.0  # the request is the limit; exceeding it ends the instance; 0: none
    instance_count: int = 1  # peers are named instance-0 .. instance-<count-1>
    # "isolated": own network namespace, peers of the task and the outside (NAT) only; "host": the
    # host's network (an operator policy decides who may ask for it); "none": loopback only
    network: str = "isolated"
    # Host paths bound into the sandbox (storage rows, helpers), after the platform's own binds, parents first.
    mounts: tuple[Mount, ...] = ()
    # Files the platform writes for the instance, bound read-only at their path (e.g. /etc/mpi/hostfile).
    files: dict[str, str] = field(default_factory=dict)
    # What runs instead of ``/bin/sh -c <command>``: an argv whose program gets the command in
    # $CAPSTAN_COMMAND (a platform entry point, e.g. the distributed-mode helper); empty: the shell.
    entrypoint: tuple[str, ...] = ()
    # A root filesystem to use as ``/`` instead of the host's system directories (an image); "": the host's.
    rootfs: str = ""
    # An argv run inside the sandbox (its namespaces, cgroup and uid) when a stop is asked for, before
    # SIGTERM; bounded by the grace period (a service replica's pre-stop hook). Empty: none.
    pre_stop: tuple[str, ...] = ()
    # Network "isolated": the TCP ports the host may connect to (a served port, its probes'); every other
    # connection from the host is refused. Empty: the host may connect to any (training instances).
    ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        validate_instance_key(self.task_id, self.instance_index)
        for target in self.files:
            if not target.startswith("/") or ".." in target.split("/") or "\0" in target:
                raise ValueError(f"file paths must be absolute, without '..': {target!r}")
        if not isinstance(self.command, str) or "\0" in self.command:
            raise ValueError("command must be a string without NUL bytes")
        if any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 for p in self.ports):
            raise ValueError("ports must be 1..65535")
        for argv in (self.entrypoint, self.pre_stop):
            if any(not isinstance(a, str) or "\0" in a for a in argv):
                raise ValueError("argv items must be strings without NUL bytes")
        if not isinstance(self.stop_grace_seconds, int) or self.stop_grace_seconds < 0:
            raise ValueError("stop_grace_seconds must be a non-negative int")
        for name, value in self.env.items():
            # Names/values go into an argv (--setenv), where NUL cannot travel
            # and '=' in a name would silently define a different variable.
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"invalid environment variable name: {name!r}")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"environment value for {name} must be a str without NUL")
        if self.network not in NETWORK_MODES:
            raise ValueError(f"network must be one of {', '.join(NETWORK_MODES)}")
        if not isinstance(self.instance_count, int) or not 1 <= self.instance_count or self.cpu < 0 or self.memory_gib < 0:
            raise ValueError("instance_count must be >= 1, cpu and memory_gib >= 0")
        # Fail at construction rather than later in the runner.
        json.dumps(self.hyperparameters)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InstanceSpec:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("instance spec JSON must be an object")
        return cls(
            task_id=data["task_id"],
            instance_index=data["instance_index"],
            command=data["command"],
            hyperparameters=dict(data.get("hyperparameters") or {}),
            env={str(k): v for k, v in (data.get("env") or {}).items()},
            stop_grace_seconds=int(data.get("stop_grace_seconds", 30)),
            cpu=float(data.get("cpu", 0.0)),
            memory_gib=float(data.get("memory_gib", 0.0)),
            instance_count=int(data.get("instance_count", 1)),
            network=str(data.get("network", "isolated")),
            mounts=tuple(Mount(**m) for m in data.get("mounts") or ()),
            files={str(k): str(v) for k, v in (data.get("files") or {}).items()},
            entrypoint=tuple(str(a) for a in data.get("entrypoint") or ()),
            rootfs=str(data.get("rootfs", "")),
            pre_stop=tuple(str(a) for a in data.get("pre_stop") or ()),
            ports=tuple(int(p) for p in data.get("ports") or ()),
        )


def validate_instance_key(task_id: str, instance_index: int) -> None:
    """Reject keys that would not map to exactly one directory under the root."""
    if not isinstance(task_id, str) or not _TASK_ID_RE.match(task_id):
        raise ValueError(f"invalid task_id for an instance directory: {task_id!r}")
    if isinstance(instance_index, bool) or not isinstance(instance_index, int) or instance_index < 0:
        raise ValueError(f"invalid instance_index: {instance_index!r}")


@dataclass(frozen=True)
class InstancePaths:
    """File layout of one instance directory ``<root>/<task_id>-<index>/``."""

    dir: Path

    @classmethod
    def under(cls, root: Path, task_id: str, instance_index: int) -> InstancePaths:
        validate_instance_key(task_id, instance_index)
        return cls(root / f"{task_id}-{instance_index}")

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def code(self) -> Path:
        return self.dir / "code"

    @property
    def input_config(self) -> Path:
        return self.dir / "input" / "config"

    @property
    def hyperparameters(self) -> Path:
        return self.input_config / "hyperparameters.json"

    @property
    def output(self) -> Path:
        return self.dir / "output"

    @property
    def summary(self) -> Path:
        """/opt/ml/summary (TensorBoard summaries): inside the output, so it is saved with it."""
        return self.output / "summary"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def runner_pid(self) -> Path:
        return self.dir / "runner.pid"

    @property
    def runner_err(self) -> Path:
        return self.dir / "runner.err"

    @property
    def exit_code(self) -> Path:
        return self.dir / "exit_code"

    @property
    def log(self) -> Path:
        return self.dir / "log.jsonl"

    @property
    def sandbox(self) -> Path:
        """The node's containment policy the instance was started under (SandboxConfig JSON)."""
        return self.dir / "sandbox.json"

    @property
    def exit_reason(self) -> Path:
        """Why the instance ended, when the platform knows better than the code (out of memory)."""
        return self.dir / "exit_reason"

    @property
    def etc(self) -> Path:
        """Files the runner generates for the sandbox's /etc (hosts, passwd, group)."""
        return self.dir / "etc"

    @property
    def launch_plan(self) -> Path:
        return self.dir / "launch.json"

    @property
    def enter_plan(self) -> Path:
        """How to run a command inside the running sandbox (``enter.py``), written once it has started."""
        return self.dir / "enter.json"

    @property
    def published(self) -> Path:
        """Where other hosts reach the instance's published ports: {"<port>": "<node address>:<port>"}."""
        return self.dir / "published.json"

    @property
    def address(self) -> Path:
        """The instance's own address (isolated network), or the host's loopback (host network)."""
        return self.dir / "address"

    @property
    def launch_error(self) -> Path:
        return self.dir / "launch.err"

    @property
    def files(self) -> Path:
        """The files of ``InstanceSpec.files`` (``f0``, ``f1``, ... in path order)."""
        return self.dir / "files"

    @property
    def stop_requested(self) -> Path:
        return self.dir / "stop_requested"

    def read_text(self, path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def read_int(self, path: Path) -> int | None:
        """Read a small integer file; ``None`` if absent or not (yet) valid."""
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so readers see either the old file or the whole new one.

    The temporary name is unique per process and thread because the executor
    and the runner may both write ``runner.pid`` at about the same time.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def enter_argv(paths: InstancePaths, argv: list[str] | tuple[str, ...]) -> list[str]:
    """The host argv that runs ``argv`` inside the instance's running sandbox (see ``enter.py``)."""
    return [sys.executable, "-I", "-S", str(ENTER_SCRIPT), str(paths.enter_plan), "--", *argv]
