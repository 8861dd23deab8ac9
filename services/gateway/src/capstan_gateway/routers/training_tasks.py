"""/api/v1/training-tasks: owned by the trainer service."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from fastapi.responses import StreamingResponse

from capstan_core.contracts.task_status import TaskStatus
from capstan_core.errors import DomainError
from capstan_core.numbers import INT64_MAX
from capstan_proto import scheduler_pb2, trainer_pb2

from ..deps import CurrentPrincipal, IdempotencyKey, PageRequest, Scheduler, Trainer
from ..schemas import LogPage, TrainingTask, TrainingTaskCreate, TrainingTaskList
from ..schemas.batch import TrainingTaskBatch, TrainingTaskBatchCreate
from ..schemas.common import from_ms, from_ms_required, parse_time
from ..schemas.observe import (
    EVALUATION_FILE,
    MetricSample,
    MetricsPage,
    TaskEventItem,
    TaskEventList,
    evaluation_of,
    is_checkpoint,
)
from ..schemas.training_tasks import OutputList, Price, PriceRequest, QueueInfo, TagsUpdate
from . import api_router

router = api_router("training-tasks")

TaskId = Annotated[str, Path(min_length=1, max_length=64)]
InstanceQuery = Annotated[int | None, Query(ge=0, le=63, description="one instance's index; default every one")]
TimeQuery = Annotated[str | None, Query(max_length=40, description="ISO-8601 (naive means UTC) or epoch milliseconds")]


@router.post("", status_code=201, summary="Create (submit) a training task")
async def create_training_task(
    body: TrainingTaskCreate,
    principal: CurrentPrincipal,
    trainer: Trainer,
    idempotency_key: IdempotencyKey = "",
) -> TrainingTask:
    req = body.to_proto(idempotency_key=idempotency_key)
    return TrainingTask.from_proto(await trainer.create_training_task(req))


@router.post(
    "/batch", status_code=201, summary="Create (submit) many training tasks at once (a sweep)",
    description="Every task is checked before any is created; with an Idempotency-Key, task i uses "
    "`<key>:<i>`, so a retried batch (also one cut short by a 503) creates nothing more.",
)
async def create_training_tasks(
    body: TrainingTaskBatchCreate,
    principal: CurrentPrincipal,
    trainer: Trainer,
    idempotency_key: IdempotencyKey = "",
) -> TrainingTaskBatch:
    return TrainingTaskBatch.from_proto(await trainer.create_training_tasks(body.to_proto(idempotency_key=idempotency_key)))


@router.get("", summary="List training tasks")
async def list_training_tasks(
    principal: CurrentPrincipal,
    trainer: Trainer,
    page: PageRequest,
    only_mine: bool = False,
    status: TaskStatus | None = None,
    resource_group_id: Annotated[str, Query(max_length=64)] = "",
) -> TrainingTaskList:
    req = trainer_pb2.ListTrainingTasksRequest(
        page=page,
        creator=principal.name if only_mine else "",
        resource_group_id=resource_group_id,
        status=status or "",
    )
    return TrainingTaskList.from_proto(await trainer.list_training_tasks(req))


@router.post("/price", summary="The estimated price per hour of a request (the form's price)")
async def estimate_price(body: PriceRequest, trainer: Trainer) -> Price:
    req = trainer_pb2.EstimatePriceRequest(resources=body.resources.to_proto(), instance_count=body.instance_count)
    return Price.from_proto(await trainer.estimate_price(req))


@router.get("/{id}", summary="Get a training task with its instances (and, while Queued, its place in the queue)")
async def get_training_task(id: TaskId, trainer: Trainer, scheduler: Scheduler) -> TrainingTask:
    t = await trainer.get_training_task(trainer_pb2.GetTrainingTaskRequest(id=id))
    task = TrainingTask.from_proto(t)
    if task.status == TaskStatus.QUEUED:
        task.queue = await _queue_info(scheduler, t)
    return task


async def _queue_info(scheduler: Scheduler, t: trainer_pb2.TrainingTask) -> QueueInfo:
    """SPEC §3.2: how long it has queued, its priority and its position (the scheduler's queue view)."""
    info = QueueInfo(queued_since=from_ms(t.queued_at_ms), priority=None, position=None, reason="")
    try:
        view = await scheduler.get_queue(scheduler_pb2.GetQueueRequest(resource_group_id=t.resource_group_id))
    except DomainError:
        return info  # the task's own view still answers when the queue's cannot
    for item in view.items:
        if item.workload_id == t.id:
            info.priority, info.position, info.reason = item.priority, item.position, item.reason
    return info


@router.patch("/{id}", summary="Edit a training task's tags")
async def update_training_task(id: TaskId, body: TagsUpdate, trainer: Trainer) -> TrainingTask:
    req = trainer_pb2.UpdateTrainingTaskRequest(id=id, tags=body.tags)
    return TrainingTask.from_proto(await trainer.update_training_task(req))


@router.delete("/{id}", status_code=204, summary="Delete a finished training task")
async def delete_training_task(id: TaskId, trainer: Trainer) -> None:
    await trainer.delete_training_task(trainer_pb2.DeleteTrainingTaskRequest(id=id))


@router.post("/{id}/start", status_code=201,
             summary="Start a finished (stopped) task again: a new task with its settings, seeded with its outputs")
async def start_training_task(id: TaskId, trainer: Trainer, idempotency_key: IdempotencyKey = "") -> TrainingTask:
    req = trainer_pb2.StartTrainingTaskRequest(id=id, idempotency_key=idempotency_key)
    return TrainingTask.from_proto(await trainer.start_training_task(req))


@router.get("/{id}/copy", summary="A new task's form, pre-filled from this task (submit it as it is, or edited)")
async def copy_training_task(id: TaskId, trainer: Trainer) -> TrainingTaskCreate:
    t = await trainer.get_training_task(trainer_pb2.GetTrainingTaskRequest(id=id))
    return TrainingTask.from_proto(t).to_create()




@router.get("/{id}/outputs", summary="What the task's instances left in /opt/ml/output and /opt/ml/model")
async def list_training_task_outputs(id: TaskId, trainer: Trainer, instance: InstanceQuery = None) -> OutputList:
    req = trainer_pb2.ListOutputsRequest(task_id=id, instance_index=-1 if instance is None else instance)
    return OutputList.from_proto(await trainer.list_outputs(req))


@router.get(
    "/{id}/outputs/{path:path}", summary="Download one output file (output/... or model/...)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def download_training_task_output(
    id: TaskId, path: Annotated[str, Path(min_length=1, max_length=4096)], trainer: Trainer,
    instance: Annotated[int, Query(ge=0, le=63)] = 0,
) -> StreamingResponse:
    chunks = await trainer.read_output(trainer_pb2.ReadOutputRequest(task_id=id, instance_index=instance, path=path))
    name = path.rsplit("/", 1)[-1].replace('"', "")
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.post("/{id}/stop", summary="Stop a queued or running training task")
async def stop_training_task(id: TaskId, trainer: Trainer, idempotency_key: IdempotencyKey = "") -> TrainingTask:
    req = trainer_pb2.StopTrainingTaskRequest(id=id, idempotency_key=idempotency_key)
    return TrainingTask.from_proto(await trainer.stop_training_task(req))


@router.get("/{id}/logs", summary="Search a training task's logs; poll with after_seq to follow")
async def get_training_task_logs(
    id: TaskId,
    trainer: Trainer,
    start: TimeQuery = None,
    end: TimeQuery = None,
    keyword: Annotated[str, Query(max_length=256, description="case-insensitive substring")] = "",
    instance: Annotated[int | None, Query(ge=0, le=63, description="one instance's index; default every one")] = None,
    after_seq: Annotated[int, Query(ge=0, le=INT64_MAX, description="last_seq of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    source: Annotated[Literal["", "platform", "code"], Query(
        description="platform: the platform's lines (setup, containment, exit); code: stdout and stderr; "
        "empty: both")] = "",
) -> LogPage:
    req = trainer_pb2.GetLogsRequest(
        task_id=id,
        start_ms=parse_time(start, "query.start") if start else 0,
        end_ms=parse_time(end, "query.end") if end else 0,
        keyword=keyword,
        limit=limit,
        instance_index=-1 if instance is None else instance,
        after_seq=after_seq,
        source=source,
    )
    return LogPage.from_proto(await trainer.get_logs(req))


@router.get("/{id}/events", summary="The task's lifecycle events (submitted, started, evicted, restarted, ended)")
async def list_training_task_events(id: TaskId, trainer: Trainer) -> TaskEventList:
    resp = await trainer.list_task_events(trainer_pb2.ListTaskEventsRequest(task_id=id))
    return TaskEventList(items=[TaskEventItem(time=from_ms_required(e.at_ms), level=e.level, type=e.type,
                                              message=e.message) for e in resp.items])


@router.get("/{id}/metrics", summary="Per-instance CPU and memory samples over time (from each instance's cgroup)")
async def get_training_task_metrics(
    id: TaskId, trainer: Trainer, instance: InstanceQuery = None, start: TimeQuery = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> MetricsPage:
    req = trainer_pb2.GetLogsRequest(task_id=id, instance_index=-1 if instance is None else instance,
                                     start_ms=parse_time(start, "query.start") if start else 0, limit=limit,
                                     source="metrics")
    resp = await trainer.get_logs(req)
    return MetricsPage(samples=[MetricSample.of(ln.ts_ms, ln.instance_index, ln.line) for ln in resp.lines],
                       last_seq=resp.last_seq)


@router.get("/{id}/checkpoints", summary="Checkpoints the task wrote to /opt/ml/output")
async def list_training_task_checkpoints(id: TaskId, trainer: Trainer, instance: InstanceQuery = None) -> OutputList:
    req = trainer_pb2.ListOutputsRequest(task_id=id, instance_index=-1 if instance is None else instance)
    files = OutputList.from_proto(await trainer.list_outputs(req)).files
    return OutputList(files=[f for f in files if is_checkpoint(f.path, f.kind)])


@router.get("/{id}/evaluation", summary=f"Evaluation results: the JSON object the code wrote to /opt/ml/{EVALUATION_FILE}")
async def get_training_task_evaluation(
    id: TaskId, trainer: Trainer, instance: Annotated[int, Query(ge=0, le=63)] = 0,
) -> dict[str, Any]:
    req = trainer_pb2.ReadOutputRequest(task_id=id, instance_index=instance, path=EVALUATION_FILE)
    data = b"".join([chunk async for chunk in await trainer.read_output(req)][:64])
    return evaluation_of(data)
