"""How any node agent (trainer or inference) joins a resource group and keeps its heartbeat."""

from __future__ import annotations

import asyncio
import logging

import grpc

from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

from .capacity import Capacity

log = logging.getLogger(__name__)


class NodeMembership:
    def __init__(
        self, scheduler: scheduler_pb2_grpc.SchedulerStub, *, resource_group: str, node_name: str, agent_kind: str,
        capacity: Capacity, heartbeat_s: float = 2.0,
    ) -> None:
        self.scheduler = scheduler
        self.resource_group = resource_group
        self.node_name = node_name
        self.agent_kind = agent_kind
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self.node_id = ""
        self.rg_id = ""

    async def _resolve_group(self) -> str:
        rg = self.resource_group
        if rg.startswith("rsg-"):
            return rg
        token = ""
        while True:
            page = await self.scheduler.ListResourceGroups(
                scheduler_pb2.ListResourceGroupsRequest(page={"page_size": 500, "page_token": token}), timeout=10
            )
            for item in page.items:
                if item.name == rg:
                    return str(item.id)
            token = page.next_page_token
            if not token:
                raise LookupError(f"no resource group named {rg!r}")

    async def join(self) -> str:
        """Join (retrying until the scheduler answers); returns the node id."""
        delay = 0.2
        while True:
            try:
                self.rg_id = await self._resolve_group()
                cap = self.capacity
                node = await self.scheduler.JoinNode(
                    scheduler_pb2.JoinNodeRequest(
                        resource_group_id=self.rg_id, name=self.node_name, cpu=cap.cpu, memory_gib=cap.memory_gib,
                        gpus=cap.gpus, agent_kind=self.agent_kind,
                    ),
                    timeout=15,
                )
                self.node_id = node.id
                log.info("joined %s as node %s (%s)", self.rg_id, node.id, cap)
                return self.node_id
            except (grpc.aio.AioRpcError, LookupError) as e:
                reason = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                log.warning("cannot join yet (%s); retrying", reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def heartbeat_forever(self) -> None:
        while True:
            try:
                await self.scheduler.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=self.node_id), timeout=5)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    await self.join()  # the scheduler does not know us (its log was reset): join again
                else:
                    log.warning("heartbeat failed: %s", e.details())
            await asyncio.sleep(self.heartbeat_s)
