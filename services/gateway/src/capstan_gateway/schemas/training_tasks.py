"""Training tasks (SPEC §3): API models and their protobuf conversions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from capstan_core.contracts.capacity import MAX_CARD_TYPE_LEN, MAX_NODE_CARDS, MAX_NODE_CPU, MAX_NODE_MEMORY_GIB
from capstan_core.contracts.task_status import TaskStatus
from capstan_proto import common_pb2, trainer_pb2

from .common import (
    FormRegion,
    Id,
    Page,
    RequestModel,
    Tags,
    dump_json_object,
    from_ms,
    from_ms_required,
    load_json_object,
    region_field,
)

TaskName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Command = Annotated[str, StringConstraints(max_length=8192)]


class Resources(BaseModel):
    """What one instance asks for (as stored)."""

    cpu: float = Field(description="cores")
    memory_gib: float = Field(description="GiB")
    gpu_type: str = Field(description='card type, e.g. "A100"; empty for CPU-only')
    gpu: float = Field(description="cards of gpu_type")

    @classmethod
    def from_proto(cls, r: common_pb2.Resources) -> Resources:
        return cls(cpu=r.cpu, memory_gib=r.memory_gib, gpu_type=r.gpu_type, gpu=r.gpu)


class ResourceRequest(RequestModel):
    """What one instance asks for: no more than the largest node may declare (the trainer decides the
    rest, e.g. gpu_type and gpu come together)."""

    cpu: float = Field(default=1.0, ge=0, le=MAX_NODE_CPU, allow_inf_nan=False, description="cores (0: the default, 1)")
    memory_gib: float = Field(
        default=1.0, ge=0, le=MAX_NODE_MEMORY_GIB, allow_inf_nan=False, description="GiB (0: the default, 1)"
    )
    gpu_type: Annotated[str, StringConstraints(max_length=MAX_CARD_TYPE_LEN)] = Field(
        default="", description='card type, e.g. "A100"; empty for CPU-only (then gpu must be 0)'
    )
    gpu: float = Field(
        default=0, ge=0, le=MAX_NODE_CARDS, allow_inf_nan=False,
        description="cards of gpu_type (0.1..1 in steps of 0.1, or whole cards); > 0 needs gpu_type",
    )

    def to_proto(self) -> common_pb2.Resources:
        return common_pb2.Resources(cpu=self.cpu, memory_gib=self.memory_gib, gpu_type=self.gpu_type, gpu=self.gpu)


class StorageRow(RequestModel):
    """One input or output (SPEC §3.1): see ``capstan_core.contracts.training.StorageRow``."""

    kind: Literal["fs", "object", "git"] = Field(
        description="fs: an operator's file-system volume, bound live; object: object storage, downloaded before "
        "the start (purpose training_output: uploaded back); git: a repository cloned before the start")
    purpose: Literal["user_model", "user_code", "user_data", "training_data", "other", "builtin_model",
                     "training_output"] = "other"
    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="fs: <volume>:<path> (platform:models/<name> is a built-in model); object: "
        "<store>:<bucket>/<prefix> (store local is the embedded default); git: the repository URL")
    path: Annotated[str, StringConstraints(min_length=2, max_length=1024)] = Field(
        description="where it appears in the instance, e.g. /opt/ml/input/data/train")
    readonly: bool = False
    branch: Annotated[str, StringConstraints(max_length=200)] = Field(default="", description="git only")
    credential: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="", description="git only: the name of a credential the operator holds (never the secret)")

    def to_proto(self) -> trainer_pb2.StorageRow:
        return trainer_pb2.StorageRow(kind=self.kind, purpose=self.purpose, source=self.source, path=self.path,
                                      readonly=self.readonly, branch=self.branch, credential=self.credential)

    @classmethod
    def from_proto(cls, r: trainer_pb2.StorageRow) -> StorageRow:
        return cls.model_validate({"kind": r.kind, "purpose": r.purpose, "source": r.source, "path": r.path,
                                   "readonly": r.readonly, "branch": r.branch, "credential": r.credential})


Mode = Literal["", "DDP", "MPI", "Horovod", "PS-Worker", "Ray"]
Location = Annotated[str, StringConstraints(max_length=1024)]
RoleName = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class TrainingTaskCreate(RequestModel):
    name: TaskName
    resource_group_id: Id
    command: Command = Field(description="multi-line shell, run in /opt/ml/code")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="written to /opt/ml/input/config/hyperparameters.json"
    )
    resources: ResourceRequest = Field(
        default_factory=ResourceRequest, description="per instance; default 1 core, 1 GiB"
    )
    instance_count: int = Field(default=1, ge=1, le=64)
    tags: Tags = Field(default_factory=dict)
    stop_grace_seconds: int = Field(
        default=30, ge=1, le=3600, description="seconds between SIGTERM and SIGKILL when stopped"
    )
    max_restarts: int = Field(
        default=0, ge=0, le=10,
        description="auto-restart: run the task again, up to this many times (1..10), when it exits abnormally "
        "while running; 0: never (the default). Evictions and lost nodes do not count.",
    )

    network: Literal["isolated", "none", "host"] = Field(
        default="isolated",
        description="isolated: the instance's own network (its task's peers, and the outside through NAT); "
        "none: loopback only; host: the host's network, only where the group's policy allows it "
        '({"SandboxRule": {"HostNetwork": 1}})',
    )

    description: Annotated[str, StringConstraints(max_length=500)] = ""
    region: FormRegion = ""
    image: Annotated[str, StringConstraints(max_length=200)] = Field(
        default="", description="a built-in image's name (GET /api/v1/images) or sha256:<digest> of an imported one; "
        "empty: the default built-in image")
    mode: Mode = Field(default="", description="distributed mode (SPEC §3.4); empty: a plain task")
    roles: dict[RoleName, Annotated[int, Field(ge=0, le=64)]] = Field(
        default_factory=dict, max_length=8,
        description='instances per role, in index order: PS-Worker {"ps": 1, "worker": 2}; Ray {"head": 1, '
        '"worker-a": 2}; empty: the mode\'s default (first instance master/launcher/head, the rest workers)')
    storage: list[StorageRow] = Field(default_factory=list, max_length=32)
    code: Location = Field(default="", description="code package <store>:<bucket>/<prefix>, into /opt/ml/code")
    output: Location = Field(
        default="", description="<store>:<bucket>/<prefix>: /opt/ml/output is uploaded there while it runs and "
        "/opt/ml/model at the end (<prefix>/<task>/<index>/...)")

    def to_proto(self, *, idempotency_key: str) -> trainer_pb2.CreateTrainingTaskRequest:
        return trainer_pb2.CreateTrainingTaskRequest(
            description=self.description, image=self.image, mode=self.mode, roles=self.roles,
            role_order=list(self.roles), storage=[r.to_proto() for r in self.storage], code=self.code,
            output=self.output,
            name=self.name,
            resource_group_id=self.resource_group_id,
            command=self.command,
            hyperparameters_json=dump_json_object(self.hyperparameters, "body.hyperparameters"),
            resources=self.resources.to_proto(),
            instance_count=self.instance_count,
            tags=self.tags,
            idempotency_key=idempotency_key,
            stop_grace_seconds=self.stop_grace_seconds,
            max_restarts=self.max_restarts,
            network=self.network,
        )


class Price(BaseModel):
    per_hour: float = Field(description="every instance, per hour, from the operator's price table")
    currency: str
    per_instance_hour: float
    note: str = Field(description="what the estimate leaves out")

    @classmethod
    def from_proto(cls, p: trainer_pb2.Price) -> Price:
        return cls(per_hour=p.per_hour, currency=p.currency, per_instance_hour=p.per_instance_hour, note=p.note)


class PriceRequest(RequestModel):
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    instance_count: int = Field(default=1, ge=1, le=64)


class TagsUpdate(RequestModel):
    tags: Tags


class QueueInfo(BaseModel):
    queued_since: datetime | None
    priority: int | None = Field(description="0 (P0, highest) .. 9")
    position: int | None = Field(description="1-based in its lane; 0: starts next cycle")
    reason: str


class TrainingInstance(BaseModel):
    index: int
    node_id: str | None
    status: str
    exit_code: int | None

    @classmethod
    def from_proto(cls, i: trainer_pb2.TrainingInstance) -> TrainingInstance:
        return cls(
            index=i.index,
            node_id=i.node_id or None,
            status=i.status,
            exit_code=i.exit_code if i.has_exit_code else None,
        )


class TrainingTask(BaseModel):
    id: str
    name: str
    resource_group_id: str
    command: str
    hyperparameters: dict[str, Any]
    resources: Resources
    instance_count: int
    status: TaskStatus
    exit_code: int | None = Field(description="null unless the task has finished")
    failure_reason: str
    tags: dict[str, str]
    creator: str
    tenant: str = ""  # the main account that owns it
    stop_grace_seconds: int
    attempt: int = Field(description="0, then +1 each time the task goes back to the queue")
    preemptions: int = Field(description="times it was evicted for higher-priority work (never restarts)")
    restarts: int = Field(description="new attempts after a failure or a lost node")
    max_restarts: int = Field(description="auto-restart budget; 0: off")
    restarts_used: int = Field(description="restarts after a failure, counted against max_restarts")
    network: str = Field(description="isolated, none or host")
    region: str = region_field()
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    instances: list[TrainingInstance]
    description: str
    image: str
    mode: str
    roles: dict[str, int]
    storage: list[StorageRow]
    code: str
    output: str
    source_task_id: str | None = Field(description="started again from this task")
    price: Price | None
    queue: QueueInfo | None = Field(default=None, description="while Queued (on GET of one task)")

    @classmethod
    def from_proto(cls, t: trainer_pb2.TrainingTask) -> TrainingTask:
        return cls(
            id=t.id,
            name=t.name,
            resource_group_id=t.resource_group_id,
            command=t.command,
            hyperparameters=load_json_object(t.hyperparameters_json),
            resources=Resources.from_proto(t.resources),
            instance_count=t.instance_count,
            status=TaskStatus(t.status),
            exit_code=_task_exit_code(t),
            failure_reason=t.failure_reason,
            tags=dict(t.tags),
            creator=t.creator,
            tenant=t.tenant,
            stop_grace_seconds=t.stop_grace_seconds,
            attempt=t.attempt,
            preemptions=t.preemptions,
            restarts=t.restarts,
            max_restarts=t.max_restarts,
            network=t.network or "isolated",
            restarts_used=t.restarts_used,
            created_at=from_ms_required(t.created_at_ms),
            started_at=from_ms(t.started_at_ms),
            ended_at=from_ms(t.ended_at_ms),
            instances=[TrainingInstance.from_proto(i) for i in t.instances],
            description=t.description,
            image=t.image,
            mode=t.mode,
            roles={k: t.roles[k] for k in t.role_order if k in t.roles} | dict(t.roles),
            storage=[StorageRow.from_proto(r) for r in t.storage],
            code=t.code,
            output=t.output,
            source_task_id=t.source_task_id or None,
            price=Price.from_proto(t.price) if t.HasField("price") else None,
        )

    def to_create(self) -> TrainingTaskCreate:
        """The submit body that makes a task like this one (SPEC §3.3 "copy")."""
        return TrainingTaskCreate.model_validate({
            "name": self.name, "resource_group_id": self.resource_group_id, "command": self.command,
            "hyperparameters": self.hyperparameters, "instance_count": self.instance_count, "tags": self.tags,
            "stop_grace_seconds": self.stop_grace_seconds, "max_restarts": self.max_restarts,
            "network": self.network, "description": self.description, "image": self.image, "mode": self.mode,
            "roles": self.roles, "storage": [r.model_dump() for r in self.storage], "code": self.code,
            "output": self.output, "region": self.region,
            "resources": {"cpu": self.resources.cpu, "memory_gib": self.resources.memory_gib,
                          "gpu_type": self.resources.gpu_type, "gpu": self.resources.gpu},
        })


def _task_exit_code(t: trainer_pb2.TrainingTask) -> int | None:
    return t.exit_code if t.has_exit_code else None


class TrainingTaskList(Page[TrainingTask]):
    @classmethod
    def from_proto(cls, resp: trainer_pb2.ListTrainingTasksResponse) -> TrainingTaskList:
        return cls(
            items=[TrainingTask.from_proto(t) for t in resp.items],
            next_page_token=resp.next_page_token,
            total=resp.total,
        )


class LogLine(BaseModel):
    time: datetime
    instance: int
    stream: str = Field(description="stdout | stderr | platform")
    line: str
    seq: int

    @classmethod
    def from_proto(cls, ln: trainer_pb2.LogLine) -> LogLine:
        return cls(
            time=from_ms_required(ln.ts_ms),
            instance=ln.instance_index,
            stream=ln.stream,
            line=ln.line,
            seq=ln.seq,
        )


class LogPage(BaseModel):
    lines: list[LogLine]
    last_seq: int = Field(description="pass as after_seq to follow the log")

    @classmethod
    def from_proto(cls, resp: trainer_pb2.GetLogsResponse) -> LogPage:
        return cls(lines=[LogLine.from_proto(ln) for ln in resp.lines], last_seq=resp.last_seq)


class OutputFile(BaseModel):
    instance: int
    path: str = Field(description="output/... or model/...")
    kind: str = Field(description="file | dir")
    size: int
    modified_at: datetime | None


class OutputList(BaseModel):
    files: list[OutputFile]

    @classmethod
    def from_proto(cls, resp: trainer_pb2.ListOutputsResponse) -> OutputList:
        return cls(files=[OutputFile(instance=f.instance_index, path=f.path, kind=f.kind, size=f.size,
                                     modified_at=from_ms(f.mtime_ms)) for f in resp.files])
