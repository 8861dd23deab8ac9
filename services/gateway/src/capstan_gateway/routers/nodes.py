"""/api/v1/nodes: owned by the scheduler service (nodes join through their agents, not here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, Field

from capstan_proto import scheduler_pb2

from ..deps import PageRequest, Scheduler
from ..schemas import Node, NodeList
from ..schemas.common import RequestModel
from . import api_router

router = api_router("nodes")


@router.get("", summary="List nodes, optionally of one resource group")
async def list_nodes(
    scheduler: Scheduler,
    page: PageRequest,
    resource_group_id: Annotated[str, Query(max_length=64, description="empty: every group")] = "",
) -> NodeList:
    req = scheduler_pb2.ListNodesRequest(resource_group_id=resource_group_id, page=page)
    return NodeList.from_proto(await scheduler.list_nodes(req))


class NodeRelease(RequestModel):
    node_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=500)


class NodeReleaseResult(BaseModel):
    items: list[Node]


@router.post("/release", summary="Release nodes (batch): Running/Abnormal -> Releasing -> Released once drained")
async def release_nodes(body: NodeRelease, scheduler: Scheduler) -> NodeReleaseResult:
    resp = await scheduler.release_nodes(scheduler_pb2.ReleaseNodesRequest(node_ids=body.node_ids))
    return NodeReleaseResult(items=[Node.from_proto(n) for n in resp.items])


@router.post("/{id}/release", summary="Release one node")
async def release_node(
    id: Annotated[str, Path(min_length=1, max_length=64)], scheduler: Scheduler
) -> Node:
    resp = await scheduler.release_nodes(scheduler_pb2.ReleaseNodesRequest(node_ids=[id]))
    return Node.from_proto(resp.items[0])
