"""/api/v1/nodes: owned by the scheduler service (nodes join through their agents, not here)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, Field

from capstan_proto import scheduler_pb2

from ..deps import PageRequest, Scheduler
from ..schemas import Node, NodeList
from ..schemas.common import RequestModel
from ..schemas.nodes import HealthCheckList
from . import api_router

router = api_router("nodes")


@router.get("", summary="List nodes, optionally of one resource group")
async def list_nodes(
    scheduler: Scheduler,
    page: PageRequest,
    resource_group_id: Annotated[str, Query(max_length=64, description="empty: every group")] = "",
    view: Annotated[
        Literal["active", "history", "all"],
        Query(description="active: the node list; history: DeployFailed and Unused nodes; all"),
    ] = "active",
) -> NodeList:
    req = scheduler_pb2.ListNodesRequest(resource_group_id=resource_group_id, page=page, view=view)
    return NodeList.from_proto(await scheduler.list_nodes(req))


@router.get("/health-checks", summary="Health-check records, newest first (of one node, one group, or all)")
async def list_health_checks(
    scheduler: Scheduler,
    page: PageRequest,
    resource_group_id: Annotated[str, Query(max_length=64, description="empty: every group")] = "",
    node_id: Annotated[str, Query(max_length=64, description="empty: every node")] = "",
) -> HealthCheckList:
    req = scheduler_pb2.ListHealthChecksRequest(resource_group_id=resource_group_id, node_id=node_id, page=page)
    return HealthCheckList.from_proto(await scheduler.list_health_checks(req))


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


@router.delete("/{id}", summary="Remove a Released node's record: it moves to the group's node history (Unused)")
async def remove_node_record(
    id: Annotated[str, Path(min_length=1, max_length=64)], scheduler: Scheduler
) -> Node:
    return Node.from_proto(await scheduler.remove_node_record(scheduler_pb2.RemoveNodeRecordRequest(node_id=id)))
