"""/api/v1/training-tasks/{id}/tensorboard: a TensorBoard on the task's summaries (SPEC §3.3), started
by the trainer and reached only through the gateway, so the gateway's authentication covers it."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from capstan_core.errors import Unavailable
from capstan_proto import trainer_pb2

from ..deps import Trainer
from . import api_router

router = api_router("training-tasks")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}


class TensorBoardInfo(BaseModel):
    url: str = Field(description="where it answers (through the gateway, with the same token)")
    ready: bool = Field(description="false while it starts: it takes a few seconds")


@router.post("/{id}/tensorboard", summary="Start (or find) the task's TensorBoard on its /opt/ml/summary")
async def start_tensorboard(id: Annotated[str, Path(min_length=1, max_length=64)], trainer: Trainer) -> TensorBoardInfo:
    tb = await trainer.start_tensorboard(trainer_pb2.StartTensorBoardRequest(task_id=id))
    return TensorBoardInfo(url=f"{tb.path_prefix}/", ready=tb.ready)


@router.get(
    "/{id}/tensorboard/{path:path}", summary="The task's TensorBoard (its pages and data), started on first use",
    response_class=Response, responses={200: {"content": {"text/html": {}, "application/json": {}}}},
)
async def proxy_tensorboard(
    id: Annotated[str, Path(min_length=1, max_length=64)], path: Annotated[str, Path(max_length=4096)],
    request: Request, trainer: Trainer,
) -> Response:
    tb = await trainer.start_tensorboard(trainer_pb2.StartTensorBoardRequest(task_id=id))
    if not tb.ready:
        raise Unavailable("the task's TensorBoard is starting; retry in a few seconds")
    url = f"http://{trainer.host}:{tb.port}{tb.path_prefix}/{path}"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(url, params=dict(request.query_params))
    except httpx.HTTPError as e:
        raise Unavailable("the task's TensorBoard did not answer; retry in a few seconds") from e
    headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_BY_HOP}
    return Response(r.content, status_code=r.status_code, headers=headers)
