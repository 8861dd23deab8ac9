"""/api/v1/nodes: owned by the scheduler service (nodes join through their agents, not here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from capstan_proto import scheduler_pb2

from ..deps import PageRequest, Scheduler
from ..schemas import NodeList
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
