"""Sandboxed execution of training-task instances on a trainer node.

Each instance runs under bubblewrap, supervised by a detached runner process
that outlives the agent; see :mod:`.executor` for the API the agent uses.
"""

from .config import SandboxConfig
from .executor import BwrapExecutor, ExecResult, Executor, InstanceState, InstanceStatus, last_record, read_log
from .spec import (
    EXIT_RUNNER_ERROR,
    EXIT_RUNNER_LOST,
    EXIT_SANDBOX_UNAVAILABLE,
    EXIT_STOPPED_BEFORE_START,
    InstancePaths,
    InstanceSpec,
)

__all__ = [
    "EXIT_RUNNER_ERROR",
    "EXIT_RUNNER_LOST",
    "EXIT_SANDBOX_UNAVAILABLE",
    "EXIT_STOPPED_BEFORE_START",
    "BwrapExecutor",
    "ExecResult",
    "Executor",
    "InstancePaths",
    "InstanceSpec",
    "InstanceState",
    "InstanceStatus",
    "SandboxConfig",
    "last_record",
    "read_log",
]
