"""/api/v1/resource-groups: owned by the scheduler service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Response

from capstan_proto import scheduler_pb2

from ..deps import CurrentPrincipal, IdempotencyKey, PageRequest, Scheduler
from ..schemas import ResourceGroup, ResourceGroupCreate, ResourceGroupList, ResourceGroupUpdate
from ..schemas.queue import QueueView
from ..schemas.resource_groups import ResourceGroupShares
from . import api_router

router = api_router("resource-groups")

ResourceGroupId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("", status_code=201, summary="Create a resource group")
async def create_resource_group(
    body: ResourceGroupCreate,
    principal: CurrentPrincipal,
    scheduler: Scheduler,
    idempotency_key: IdempotencyKey = "",
) -> ResourceGroup:
    req = body.to_proto(idempotency_key=idempotency_key)
    return ResourceGroup.from_proto(await scheduler.create_resource_group(req))


@router.get("", summary="List resource groups")
async def list_resource_groups(scheduler: Scheduler, page: PageRequest) -> ResourceGroupList:
    resp = await scheduler.list_resource_groups(scheduler_pb2.ListResourceGroupsRequest(page=page))
    return ResourceGroupList.from_proto(resp)


@router.get("/{id}", summary="Get a resource group")
async def get_resource_group(id: ResourceGroupId, scheduler: Scheduler) -> ResourceGroup:
    return ResourceGroup.from_proto(await scheduler.get_resource_group(scheduler_pb2.GetResourceGroupRequest(id=id)))


@router.patch("/{id}", summary="Edit a resource group (name, description, tags, scheduling policy)")
async def update_resource_group(id: ResourceGroupId, body: ResourceGroupUpdate, scheduler: Scheduler) -> ResourceGroup:
    return ResourceGroup.from_proto(await scheduler.update_resource_group(body.to_proto(id)))


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete a resource group (refused, naming them, while any node is in use)",
    response_class=Response,
)
async def delete_resource_group(id: ResourceGroupId, scheduler: Scheduler) -> Response:
    await scheduler.delete_resource_group(scheduler_pb2.DeleteResourceGroupRequest(id=id))
    return Response(status_code=204)


@router.put("/{id}/shares", summary="Share a resource group with other tenants (the operator's; the whole list)")
async def share_resource_group(id: ResourceGroupId, body: ResourceGroupShares, scheduler: Scheduler) -> ResourceGroup:
    req = scheduler_pb2.ShareResourceGroupRequest(id=id, tenants=body.tenants)
    return ResourceGroup.from_proto(await scheduler.share_resource_group(req))


@router.get("/{id}/queue", summary="The queue: positions, why each item waits, free cards per type, the node board")
async def get_queue(id: ResourceGroupId, scheduler: Scheduler) -> QueueView:
    return QueueView.from_proto(await scheduler.get_queue(scheduler_pb2.GetQueueRequest(resource_group_id=id)))
