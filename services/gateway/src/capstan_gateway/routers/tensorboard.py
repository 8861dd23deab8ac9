"""/api/v1/training-tasks/{id}/tensorboard: a TensorBoard on the task's summaries (SPEC §3.3), started
by the trainer and reached only through the gateway, so the gateway's authentication covers it."""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import quote

import httpx
from fastapi import Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from capstan_core.errors import InvalidArgument, NotFound, Unavailable
from capstan_proto import trainer_pb2

from ..deps import Trainer
from . import api_router

router = api_router("training-tasks")
START_WAIT_S = 60.0
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
    tb = await _started(trainer, id)
    url = httpx.URL(f"http://{trainer.host}:{tb.port}").copy_with(
        path=f"{tb.path_prefix}/{quote(path, safe='/')}", params=dict(request.query_params))
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(url)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise Unavailable("the task's TensorBoard did not answer; retry in a few seconds") from e
    if r.status_code == 404:
        raise NotFound(f"the task's TensorBoard has no page {path!r}")
    if r.status_code >= 400:
        raise InvalidArgument(f"the task's TensorBoard refused the request ({r.status_code})", field="path")
    headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_BY_HOP}
    return Response(r.content, status_code=r.status_code, headers=headers)


async def _started(trainer: Trainer, task_id: str) -> trainer_pb2.TensorBoard:
    """The task's TensorBoard once it answers (it takes a few seconds to come up the first time)."""
    deadline = asyncio.get_running_loop().time() + START_WAIT_S
    while True:
        tb = await trainer.start_tensorboard(trainer_pb2.StartTensorBoardRequest(task_id=task_id))
        if tb.ready:
            return tb
        if asyncio.get_running_loop().time() > deadline:
            raise Unavailable("the task's TensorBoard is still starting; retry in a few seconds")
        await asyncio.sleep(0.25)
