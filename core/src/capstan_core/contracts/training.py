"""Events of the training-task aggregate (owner: trainer service). Subject ``capstan.evt.train.<task-id>``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..events import Event, event
from ..network_modes import NETWORK_MODES  # noqa: F401 - re-exported: part of the task contract
from .common import ResourceSpec

AGGREGATE = "train"

# SPEC §3.4: the distributed training modes ("" is a plain task: the command runs on every instance).
TRAINING_MODES = ("", "DDP", "MPI", "Horovod", "PS-Worker", "Ray")
# SPEC §3.1: what a storage row is for. "builtin_model" (the platform's models) is file-system only.
STORAGE_PURPOSES = ("user_model", "user_code", "user_data", "training_data", "other", "builtin_model",
                    "training_output")
STORAGE_KINDS = ("fs", "object", "git")


class StorageRow(BaseModel):
    """One input or output of a task (SPEC §3.1 "storage paths" and "git storage").

    - ``fs``: a file-system volume the operator configured, bind-mounted live at ``path``; ``source`` is
      ``<volume>:<path inside it>`` (``platform:models/tiny-gpt`` is a built-in model, read-only).
    - ``object``: object storage, downloaded into ``path`` before the start (and, for purpose
      ``training_output``, uploaded from it while it runs and at the end); ``source`` is
      ``<store>:<bucket>/<prefix>``.
    - ``git``: ``source`` is the repository's URL, cloned (``branch``, or its default) into ``path``
      before the start; ``credential`` names a credential the operator holds (never the secret itself).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["fs", "object", "git"]
    purpose: str = "other"
    source: str
    path: str
    readonly: bool = False
    branch: str = ""
    credential: str = ""


@event("TrainingTaskSubmitted", version=1)
class TrainingTaskSubmitted(Event):
    task_id: str
    name: str
    resource_group_id: str
    command: str
    hyperparameters: dict[str, Any]
    resources: ResourceSpec
    instance_count: int
    tags: dict[str, str]
    creator: str
    stop_grace_seconds: int
    at_ms: int
    # Auto-restart budget (SPEC 3.1): restarts after a failure; 0 = off. Absent in older events.
    max_restarts: int = 0
    # The instances' network (NETWORK_MODES): "isolated" (own namespace; the task's peers and the outside
    # through NAT), "none" (loopback only) or "host" (only where the group's policy allows it).
    network: str = "isolated"
    # SPEC §3.1 (issue #10). All optional, so earlier events read as before.
    description: str = ""
    image: str = ""  # a built-in image's name, or "sha256:<digest>" of an imported one; "": the default
    mode: str = ""  # TRAINING_MODES
    roles: dict[str, int] = {}  # how many instances take each role, in index order (see domain.roles)
    storage: list[StorageRow] = []
    code: str = ""  # a code package: "<store>:<bucket>/<prefix>", downloaded into /opt/ml/code
    output: str = ""  # where /opt/ml/output and /opt/ml/model are uploaded: "<store>:<bucket>/<prefix>"
    source_task_id: str = ""  # started again from this (stopped) task: its outputs seed this one's
    tenant: str = ""  # the main account that owns it (#8); "" before accounts existed


@event("TrainingTaskTagsUpdated", version=1)
class TrainingTaskTagsUpdated(Event):
    """The task's tags after the edit (all of them)."""

    task_id: str
    tags: dict[str, str]
    at_ms: int


@event("TrainingTaskDeleted", version=1)
class TrainingTaskDeleted(Event):
    """A finished task is removed from the lists (its events stay in the log)."""

    task_id: str
    by: str
    at_ms: int


@event("TrainingInstanceStarted", version=1)
class TrainingInstanceStarted(Event):
    task_id: str
    index: int
    node_id: str
    at_ms: int


@event("TrainingInstanceExited", version=1)
class TrainingInstanceExited(Event):
    task_id: str
    index: int
    node_id: str
    exit_code: int
    message: str = ""
    at_ms: int


@event("TrainingTaskStopRequested", version=1)
class TrainingTaskStopRequested(Event):
    task_id: str
    by: str
    at_ms: int


@event("TrainingTaskPreempting", version=1)
class TrainingTaskPreempting(Event):
    """This attempt is evicted: the scheduler asked for its resources, or the platform stopped its
    instances (``capstan down``). Instances get SIGTERM and their grace period; once all have exited
    the task is requeued, an eviction, never a failure or a restart."""

    task_id: str
    attempt: int
    preemptor_id: str
    at_ms: int
    reason: str = "preempted"


@event("TrainingTaskRequeued", version=1)
class TrainingTaskRequeued(Event):
    """Every instance of the previous attempt has exited (evicted, restarting after a failure) or its node
    was lost: the task waits again as attempt ``attempt``. An eviction does not count as a restart."""

    task_id: str
    attempt: int
    reason: str
    at_ms: int
    # "preempted": an eviction (not a restart); "node_lost": a restart, the platform's fault, not
    # counted against ``max_restarts``; "failed": an auto-restart after a failure, counted against it.
    cause: str = "preempted"


@event("TrainingTaskRestarting", version=1)
class TrainingTaskRestarting(Event):
    """An instance of attempt ``attempt`` exited abnormally while the task ran, and the task has restarts
    left (``restart`` is the n-th of its ``max_restarts``): the attempt's other instances are stopped
    (SIGTERM and the grace period); once all have exited, ``TrainingTaskRequeued(cause="failed")``."""

    task_id: str
    attempt: int
    index: int
    exit_code: int
    restart: int
    reason: str = ""
    at_ms: int


@event("TrainingTaskEnded", version=1)
class TrainingTaskEnded(Event):
    task_id: str
    status: Literal["Succeeded", "Failed", "Stopped"]
    exit_code: int | None = None
    reason: str = ""
    at_ms: int


# A file `capstan down` leaves in a running instance's directory before it stops the instance's runner:
# the platform stopped it, not the user and not its code, so the agent reports it as an eviction.
PLATFORM_STOP_FILE = "platform-stop"
