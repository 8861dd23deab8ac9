"""The training-task aggregate: fold (events -> state) and decide (command -> events)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from capstan_core.contracts.capacity import check_request
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import CAPABILITY_TRAINING, WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.contracts.task_status import TaskStatus, advance
from capstan_core.contracts.training import (
    NETWORK_MODES,
    StorageRow,
    TrainingInstanceExited,
    TrainingInstanceStarted,
    TrainingTaskDeleted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskRestarting,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
    TrainingTaskTagsUpdated,
)
from capstan_core.errors import FailedPrecondition, InvalidArgument, NotFound
from capstan_core.events import Event
from capstan_core.numbers import TOO_DEEP, check_storable

from .form import validate_form

NAME_MAX = 256
COMMAND_MAX = 8192
MAX_INSTANCES = 64
DEFAULT_GRACE_S = 30
MAX_RESTARTS = 10  # SPEC 3.1: auto-restart allows 1..10 restarts (0 = off)
_NAME = re.compile(r"^[^\W_][\w-]*$", re.UNICODE)


def _with_workload_contract(decide: Callable[..., list[Event]]) -> Callable[..., list[Event]]:
    """The scheduler's own contract beside the trainer's events, in the same commit: a submitted task is a
    ``WorkloadSubmitted`` (capability "training"), an ended one a ``WorkloadWithdrawn``. (A requeue stays
    ``TrainingTaskRequeued``, which the scheduler reads: the workload is the same, only its attempt is new.)"""

    @functools.wraps(decide)
    def wrapped(*args: Any, **kwargs: Any) -> list[Event]:
        out: list[Event] = []
        for e in decide(*args, **kwargs):
            out.append(e)
            if isinstance(e, TrainingTaskSubmitted):
                out.append(WorkloadSubmitted(
                    workload_id=e.task_id, kind="training", capability=CAPABILITY_TRAINING,
                    resource_group_id=e.resource_group_id, resources=e.resources, instance_count=e.instance_count,
                    tags=e.tags, at_ms=e.at_ms, tenant=e.tenant))
            elif isinstance(e, TrainingTaskEnded):
                out.append(WorkloadWithdrawn(workload_id=e.task_id, reason=e.reason or e.status, at_ms=e.at_ms))
        return out

    return wrapped


@dataclass
class Task:
    submitted: TrainingTaskSubmitted | None = None
    started: dict[int, str] = field(default_factory=dict)
    exited: dict[int, int] = field(default_factory=dict)
    stop_requested: bool = False
    ended: TrainingTaskEnded | None = None
    attempt: int = 0  # grows when an attempt goes back to the queue (evicted, restarted, node lost)
    preempting: TrainingTaskPreempting | None = None
    restarting: TrainingTaskRestarting | None = None  # this attempt failed and is leaving, to run again
    restarts_used: int = 0  # requeues after a failure: what the auto-restart budget has paid for
    # The one state machine over the task's own events (the scheduler's Queued/Starting are not among them).
    status: TaskStatus | None = None
    tags: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    @property
    def max_restarts(self) -> int:
        return self.submitted.max_restarts if self.submitted is not None else 0


def fold(events: Sequence[Event]) -> Task:
    t = Task()
    for e in events:
        t.status = advance(t.status, e)
        if isinstance(e, TrainingTaskSubmitted):
            t.submitted, t.tags = e, dict(e.tags)
        elif isinstance(e, TrainingTaskTagsUpdated):
            t.tags = dict(e.tags)
        elif isinstance(e, TrainingTaskDeleted):
            t.deleted = True
        elif isinstance(e, TrainingInstanceStarted):
            t.started[e.index] = e.node_id
        elif isinstance(e, TrainingInstanceExited):
            t.exited[e.index] = e.exit_code
        elif isinstance(e, TrainingTaskStopRequested):
            t.stop_requested = True
        elif isinstance(e, TrainingTaskEnded):
            t.ended = e
        elif isinstance(e, TrainingTaskPreempting):
            t.preempting = e
        elif isinstance(e, TrainingTaskRestarting):
            t.restarting = e
        elif isinstance(e, TrainingTaskRequeued):
            t.attempt = e.attempt
            t.started, t.exited, t.preempting, t.restarting = {}, {}, None, None
            if e.cause == "failed":
                t.restarts_used += 1
    return t


@dataclass(frozen=True)
class SubmitTrainingTask:
    task_id: str
    name: str
    resource_group_id: str
    command: str
    hyperparameters_json: str
    resources: ResourceSpec
    instance_count: int
    tags: dict[str, str]
    creator: str
    stop_grace_seconds: int
    max_restarts: int = 0
    network: str = "isolated"
    description: str = ""
    image: str = ""
    mode: str = ""
    roles: dict[str, int] = field(default_factory=dict)
    storage: tuple[StorageRow, ...] = ()
    code: str = ""
    output: str = ""
    source_task_id: str = ""
    tenant: str = ""  # the creator's main account (#8): the caller's, never a request field


def parse_hyperparameters(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"hyperparameters is not valid JSON: {e.msg} at position {e.pos}", field="hyperparameters") from e
    except RecursionError as e:
        raise InvalidArgument(f"hyperparameters: {TOO_DEEP}", field="hyperparameters") from e
    if not isinstance(value, dict):
        raise InvalidArgument("hyperparameters must be a JSON object", field="hyperparameters")
    check_storable(value, "hyperparameters")  # NaN, Infinity, 1e400, integers beyond 64 bits, NUL
    return value


def validate_resources(r: ResourceSpec) -> None:
    """One instance's request: finite, no larger than any node may be (the shared node limits), a
    card type with cards and the reverse; cards in tenths up to one, or whole cards."""
    check_request(r.cpu, r.memory_gib, r.gpu_type, r.gpu)
    if r.gpu > 0:
        tenths = round(r.gpu * 10)
        if abs(r.gpu * 10 - tenths) > 1e-6 or (r.gpu > 1 and abs(r.gpu - round(r.gpu)) > 1e-9):
            raise InvalidArgument(
                "resources.gpu must be 0.1..1 in steps of 0.1, or a whole number of cards", field="resources.gpu"
            )


@_with_workload_contract
def decide_submit(t: Task, cmd: SubmitTrainingTask, now_ms: int) -> list[Event]:
    if not cmd.name or len(cmd.name) > NAME_MAX or not _NAME.match(cmd.name):
        raise InvalidArgument(
            f"name must be 1..{NAME_MAX} letters, digits, '_' or '-', starting with a letter or a digit", field="name"
        )
    if not cmd.command.strip():
        raise InvalidArgument("command is required", field="command")
    if len(cmd.command) > COMMAND_MAX:
        raise InvalidArgument(f"command must be at most {COMMAND_MAX} characters", field="command")
    if not cmd.resource_group_id:
        raise InvalidArgument("resource_group_id is required", field="resource_group_id")
    if not 1 <= cmd.instance_count <= MAX_INSTANCES:
        raise InvalidArgument(f"instance_count must be 1..{MAX_INSTANCES}", field="instance_count")
    if not 1 <= cmd.stop_grace_seconds <= 86400:
        raise InvalidArgument("stop_grace_seconds must be 1..86400", field="stop_grace_seconds")
    if cmd.network not in NETWORK_MODES:
        raise InvalidArgument(f"network must be one of {', '.join(NETWORK_MODES)}", field="network")
    if not 0 <= cmd.max_restarts <= MAX_RESTARTS:
        raise InvalidArgument(
            f"max_restarts must be 1..{MAX_RESTARTS}, or 0 for no automatic restart", field="max_restarts"
        )
    validate_resources(cmd.resources)
    hyper = parse_hyperparameters(cmd.hyperparameters_json)
    roles = validate_form(
        description=cmd.description, image=cmd.image, mode=cmd.mode, roles=cmd.roles,
        instance_count=cmd.instance_count, storage=list(cmd.storage), code=cmd.code, output=cmd.output,
    )
    if t.submitted is not None:
        if t.submitted.name == cmd.name and t.submitted.command == cmd.command:
            return []  # a retried submit with the same idempotency key
        raise FailedPrecondition(f"training task {cmd.task_id} already exists with other settings")
    return [
        TrainingTaskSubmitted(
            task_id=cmd.task_id, name=cmd.name, resource_group_id=cmd.resource_group_id, command=cmd.command,
            hyperparameters=hyper, resources=cmd.resources, instance_count=cmd.instance_count, tags=cmd.tags,
            creator=cmd.creator, stop_grace_seconds=cmd.stop_grace_seconds, at_ms=now_ms, max_restarts=cmd.max_restarts,
            network=cmd.network, description=cmd.description, image=cmd.image, mode=cmd.mode, roles=roles,
            storage=list(cmd.storage), code=cmd.code, output=cmd.output, source_task_id=cmd.source_task_id,
            tenant=cmd.tenant,
        )
    ]


def _existing(t: Task, task_id: str) -> TrainingTaskSubmitted:
    if t.submitted is None or t.deleted:
        raise NotFound(f"training task {task_id} does not exist")
    return t.submitted


def decide_update_tags(t: Task, task_id: str, tags: dict[str, str], now_ms: int) -> list[Event]:
    """Tags stay editable through the task's life (SPEC §3.3, basic info)."""
    _existing(t, task_id)
    if tags == t.tags:
        return []
    return [TrainingTaskTagsUpdated(task_id=task_id, tags=tags, at_ms=now_ms)]


def decide_delete(t: Task, task_id: str, by: str, now_ms: int) -> list[Event]:
    """Only a finished task is deleted (stop it first)."""
    _existing(t, task_id)
    if t.ended is None:
        raise FailedPrecondition(
            f"training task {task_id} is {t.status or 'not finished'}; stop it first (only a finished task is deleted)")
    return [TrainingTaskDeleted(task_id=task_id, by=by, at_ms=now_ms)]


def decide_stop(t: Task, task_id: str, by: str, now_ms: int) -> list[Event]:
    _existing(t, task_id)
    if t.ended is not None:
        raise FailedPrecondition(f"training task {task_id} has already ended ({t.ended.status}); nothing to stop")
    if t.stop_requested:
        return []
    return [TrainingTaskStopRequested(task_id=task_id, by=by, at_ms=now_ms)]


def decide_preempting(t: Task, *, task_id: str, preemptor_id: str, now_ms: int) -> list[Event]:
    _existing(t, task_id)
    if t.ended is not None or t.preempting is not None or t.stop_requested or t.restarting is not None:
        return []  # already leaving: the requeue that follows frees the resources all the same
    return [TrainingTaskPreempting(task_id=task_id, attempt=t.attempt, preemptor_id=preemptor_id, at_ms=now_ms)]


@_with_workload_contract
def decide_restart_lost(t: Task, *, task_id: str, reason: str, now_ms: int) -> list[Event]:
    """Its node was lost for good: the attempt cannot finish; run the task again as a new attempt."""
    _existing(t, task_id)
    if t.ended is not None:
        return []
    if t.stop_requested:
        return [TrainingTaskEnded(task_id=task_id, status="Stopped", exit_code=None, reason="stopped by user", at_ms=now_ms)]
    if t.restarting is not None:  # the attempt had failed already: the restart it was granted goes ahead
        return [_requeue_failed(t, task_id, now_ms)]
    # Not counted against max_restarts: a lost node is the platform's fault, not the task's.
    return [TrainingTaskRequeued(task_id=task_id, attempt=t.attempt + 1, reason=reason, at_ms=now_ms, cause="node_lost")]


def _requeue_failed(t: Task, task_id: str, now_ms: int) -> TrainingTaskRequeued:
    assert t.restarting is not None
    return TrainingTaskRequeued(
        task_id=task_id, attempt=t.attempt + 1, reason=t.restarting.reason, at_ms=now_ms, cause="failed"
    )


@_with_workload_contract
def decide_report(
    t: Task, *, task_id: str, index: int, node_id: str, state: str, exit_code: int, message: str, now_ms: int,
    attempt: int = 0,
) -> list[Event]:
    sub = _existing(t, task_id)
    if not 0 <= index < sub.instance_count:
        raise InvalidArgument(f"instance_index must be 0..{sub.instance_count - 1}", field="instance_index")
    if t.ended is not None or attempt != t.attempt:
        return []  # ended, or a late report about an earlier (evicted) attempt
    if state == "Running":
        if index in t.started or index in t.exited:
            return []
        return [TrainingInstanceStarted(task_id=task_id, index=index, node_id=node_id, at_ms=now_ms)]
    if state not in ("Exited", "Evicted"):
        raise InvalidArgument("state must be Running, Exited or Evicted", field="state")
    if index in t.exited:
        return []
    out: list[Event] = [
        TrainingInstanceExited(task_id=task_id, index=index, node_id=node_id, exit_code=exit_code, message=message, at_ms=now_ms)
    ]
    exited = {**t.exited, index: exit_code}
    preempting = t.preempting
    if state == "Evicted" and not (t.stop_requested or preempting or t.restarting):
        # The platform stopped it (its node went down with ``capstan down``): not the code's failure.
        # The attempt's other instances leave too, and the task runs again as an eviction.
        preempting = TrainingTaskPreempting(
            task_id=task_id, attempt=t.attempt, preemptor_id="", at_ms=now_ms,
            reason=message or f"instance {index} was stopped by the platform",
        )
        out.append(preempting)
    if t.stop_requested:
        if len(exited) == sub.instance_count:
            out.append(TrainingTaskEnded(task_id=task_id, status="Stopped", exit_code=None, reason="stopped by user", at_ms=now_ms))
    elif preempting is not None:
        if len(exited) == sub.instance_count:
            out.append(TrainingTaskRequeued(task_id=task_id, attempt=t.attempt + 1, reason=preempting.reason, at_ms=now_ms))
    elif t.restarting is not None:
        if len(exited) == sub.instance_count:
            out.append(_requeue_failed(t, task_id, now_ms))
    elif exit_code != 0:
        # The agent's message, when it has one, says why better than the code does ("out of memory
        # (limit 1 GiB)" rather than "exited with code 137").
        failure = f"instance {index}: {message}" if message else f"instance {index} exited with code {exit_code}"
        if t.restarts_used < t.max_restarts:
            n = t.restarts_used + 1
            restarting = TrainingTaskRestarting(
                task_id=task_id, attempt=t.attempt, index=index, exit_code=exit_code, restart=n,
                reason=f"{failure}; automatic restart {n} of {t.max_restarts}", at_ms=now_ms,
            )
            out.append(restarting)
            if len(exited) == sub.instance_count:  # nothing else to wait for
                out.append(_requeue_failed(replace(t, restarting=restarting), task_id, now_ms))
        else:
            if t.max_restarts:
                failure += f"; all {t.max_restarts} automatic restart(s) used"
            out.append(TrainingTaskEnded(task_id=task_id, status="Failed", exit_code=exit_code, reason=failure, at_ms=now_ms))
    elif len(exited) == sub.instance_count and all(c == 0 for c in exited.values()):
        out.append(TrainingTaskEnded(task_id=task_id, status="Succeeded", exit_code=0, at_ms=now_ms))
    return out


@_with_workload_contract
def decide_end(t: Task, *, task_id: str, status: str, reason: str, now_ms: int) -> list[Event]:
    """End a task that never ran (rejected by the scheduler, or stopped while queued)."""
    _existing(t, task_id)
    if t.ended is not None:
        return []
    return [TrainingTaskEnded(task_id=task_id, status=status, exit_code=None, reason=reason, at_ms=now_ms)]  # type: ignore[arg-type]
