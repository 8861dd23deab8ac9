"""How any node agent (trainer or inference) joins a resource group and keeps its heartbeat."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from capstan_core.capacity import Capacity
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

from .healthcheck import CheckFn, basic_checks, run_checks

log = logging.getLogger(__name__)


class NodeMembership:
    def __init__(
        self, scheduler: scheduler_pb2_grpc.SchedulerStub, *, resource_group: str, node_name: str, agent_kind: str,
        capacity: Capacity, capabilities: Sequence[str] = (), heartbeat_s: float = 2.0, checks: Sequence[CheckFn] | None = None,
        health_interval_s: float = 300.0, work_dir: Path | None = None,
    ) -> None:
        """``resource_group``: the group's id (the one the node's join token named). ``checks`` run
        before joining (deploy checks: any failing -> DeployFailed) and every ``health_interval_s``
        after (failing -> Abnormal); default: disk, memory and GPUs."""
        self.scheduler = scheduler
        self.resource_group = resource_group
        self.node_name = node_name
        self.agent_kind = agent_kind
        self.capabilities = list(capabilities)
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self.checks = list(checks) if checks is not None else basic_checks(capacity, work_dir or Path.cwd())
        self.health_interval_s = health_interval_s
        self.node_id = ""
        self.rg_id = resource_group
        self.state = ""
        self._last_health = 0.0

    async def _run_checks(self) -> list[scheduler_pb2.HealthCheck]:
        results = await asyncio.to_thread(run_checks, self.checks)
        self._last_health = time.monotonic()
        for c in results:
            if not c.ok:
                log.warning("health check %s failed: %s", c.name, c.detail)
        return [scheduler_pb2.HealthCheck(name=c.name, ok=c.ok, detail=c.detail) for c in results]

    async def join(self) -> str:
        """Join (retrying until the scheduler answers); returns the node id."""
        delay = 0.2
        while True:
            try:
                cap = self.capacity
                checks = await self._run_checks()
                node = await self.scheduler.JoinNode(
                    scheduler_pb2.JoinNodeRequest(
                        resource_group_id=self.rg_id, name=self.node_name, cpu=cap.cpu, memory_gib=cap.memory_gib,
                        gpus=cap.gpus, agent_kind=self.agent_kind, checks=checks,
                        capabilities=self.capabilities,
                    ),
                    timeout=15,
                )
                self.node_id, self.state = node.id, node.state
                if node.state == "DeployFailed":
                    log.error("node %s failed to deploy: %s (checks run again in %gs)", node.id, node.state_reason,
                              self.health_interval_s)
                else:
                    log.info("joined %s as node %s (%s)", self.rg_id, node.id, cap)
                return self.node_id
            except grpc.aio.AioRpcError as e:
                log.warning("cannot join yet (%s); retrying", e.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def check_health(self) -> None:
        """Run the checks now: a node that failed to deploy joins again, a deployed one reports them."""
        if self.state == "DeployFailed":
            await self.join()
            return
        node = await self.scheduler.ReportHealthCheck(
            scheduler_pb2.ReportHealthCheckRequest(node_id=self.node_id, checks=await self._run_checks()), timeout=15
        )
        self.state = node.state

    async def heartbeat_forever(self) -> None:
        while True:
            try:
                if time.monotonic() - self._last_health >= self.health_interval_s:
                    await self.check_health()
                beat = await self.scheduler.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=self.node_id), timeout=5)
                self.state = beat.state
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    await self.join()  # the scheduler does not know us (its log was reset): join again
                else:
                    log.warning("heartbeat failed: %s", e.details())
            await asyncio.sleep(self.heartbeat_s)
