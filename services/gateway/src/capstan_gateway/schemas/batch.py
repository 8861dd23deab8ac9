"""Many training tasks in one request (a sweep): ``POST /api/v1/training-tasks/batch``."""

from __future__ import annotations

from pydantic import BaseModel, Field

from capstan_proto import trainer_pb2

from .common import RequestModel
from .training_tasks import TrainingTask, TrainingTaskCreate

MAX_BATCH = 1000  # the trainer's limit too; the 1 MiB body cap may come first for long commands


class TrainingTaskBatchCreate(RequestModel):
    items: list[TrainingTaskCreate] = Field(
        min_length=1, max_length=MAX_BATCH,
        description=f"1..{MAX_BATCH} tasks, each as the single create takes it; all are checked before any is "
        "created, and a refusal names the item (items[3].name)",
    )

    def to_proto(self, *, idempotency_key: str) -> trainer_pb2.CreateTrainingTasksRequest:
        return trainer_pb2.CreateTrainingTasksRequest(
            items=[item.to_proto(idempotency_key="") for item in self.items], idempotency_key=idempotency_key
        )


class TrainingTaskBatch(BaseModel):
    items: list[TrainingTask] = Field(description="the tasks, in the request's order")

    @classmethod
    def from_proto(cls, resp: trainer_pb2.CreateTrainingTasksResponse) -> TrainingTaskBatch:
        return cls(items=[TrainingTask.from_proto(t) for t in resp.items])
