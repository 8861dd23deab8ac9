"""/api/v1/training-tasks: owned by the trainer service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from capstan_core.numbers import INT64_MAX
from capstan_proto import trainer_pb2

from ..deps import CurrentPrincipal, IdempotencyKey, PageRequest, Trainer
from ..schemas import LogPage, TrainingTask, TrainingTaskCreate, TrainingTaskList
from ..schemas.batch import TrainingTaskBatch, TrainingTaskBatchCreate
from ..schemas.common import parse_time
from ..schemas.training_tasks import TaskStatus
from . import api_router

router = api_router("training-tasks")

TaskId = Annotated[str, Path(min_length=1, max_length=64)]
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


@router.get("/{id}", summary="Get a training task with its instances")
async def get_training_task(id: TaskId, trainer: Trainer) -> TrainingTask:
    return TrainingTask.from_proto(await trainer.get_training_task(trainer_pb2.GetTrainingTaskRequest(id=id)))


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
) -> LogPage:
    req = trainer_pb2.GetLogsRequest(
        task_id=id,
        start_ms=parse_time(start, "query.start") if start else 0,
        end_ms=parse_time(end, "query.end") if end else 0,
        keyword=keyword,
        limit=limit,
        instance_index=-1 if instance is None else instance,
        after_seq=after_seq,
    )
    return LogPage.from_proto(await trainer.get_logs(req))
