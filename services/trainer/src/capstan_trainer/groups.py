"""Is a resource group there to submit to? Asked of the scheduler once per group, then answered locally.

A submit used to ask the scheduler (``GetResourceGroup``) every time: an RPC and two queries on the
scheduler for each of hundreds of submissions a second. The answer for a group that exists is kept, and
dropped as soon as the trainer's own read of the log applies a ``ResourceGroupUpdated`` or
``ResourceGroupDeleted`` for it (an answer that was in flight while the group changed is not kept). A group
not known here is always asked for, so one created a moment ago is found. The host's network is decided
on a fresh answer every time: a policy just tightened must refuse at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from capstan_core import grpcutil
from capstan_core.contracts.scheduling import ResourceGroupDeleted, ResourceGroupShared, ResourceGroupUpdated
from capstan_core.errors import InvalidArgument, NotFound, Unavailable
from capstan_core.eventstore import RecordedEvent
from capstan_core.service import ServiceContext
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc


class GroupCheck:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # group id -> its policy, owning tenant and the tenants it is shared with, as last answered
        self._known: dict[str, tuple[dict[str, Any], str, frozenset[str]]] = {}
        self._changes: dict[str, int] = {}  # group id -> how many changes the log showed for it
        ctx.runner.on_batch(self._on_batch)

    def _on_batch(self, _position: int, records: Sequence[RecordedEvent]) -> None:
        for r in records:
            if isinstance(r.event, (ResourceGroupUpdated, ResourceGroupDeleted, ResourceGroupShared)):
                self._known.pop(r.event.rg_id, None)
                self._changes[r.event.rg_id] = self._changes.get(r.event.rg_id, 0) + 1

    async def policy(self, rg_id: str, *, fresh: bool = False, tenant: str = "") -> dict[str, Any]:
        """The group's policy; raises InvalidArgument when it does not exist (or, ``tenant`` given, is
        neither that tenant's nor shared with it), Unavailable when the scheduler cannot say. ``fresh``:
        ask the scheduler even when an answer is kept."""
        known = None if fresh else self._known.get(rg_id)
        if known is None or (tenant and not _usable(known, tenant)):  # a share just made: ask, not the cache
            before = self._changes.get(rg_id, 0)
            known = await self._ask(rg_id)
            if self._changes.get(rg_id, 0) == before:
                self._known[rg_id] = known
        if tenant and not _usable(known, tenant):
            raise InvalidArgument(f"resource group {rg_id} does not exist", field="resource_group_id")
        return known[0]

    async def _ask(self, rg_id: str) -> tuple[dict[str, Any], str, frozenset[str]]:
        if not self.ctx.settings.scheduler_addr:
            raise Unavailable("the trainer is not configured with the scheduler's address")
        stub = scheduler_pb2_grpc.SchedulerStub(self.ctx.channel(self.ctx.settings.scheduler_addr, "scheduler"))
        try:
            # Shorter than the gateway's deadline, so a slow scheduler is named as such, not the trainer.
            group = await stub.GetResourceGroup(scheduler_pb2.GetResourceGroupRequest(id=rg_id), timeout=5)
        except grpc.aio.AioRpcError as e:
            err = grpcutil.to_domain_error(e, service="scheduler")  # down: a 503 naming the scheduler
            if isinstance(err, NotFound):
                raise InvalidArgument(f"resource group {rg_id} does not exist", field="resource_group_id") from e
            raise err from e
        policy: dict[str, Any] = json.loads(group.policy_json or "{}")
        return policy, group.tenant, frozenset(group.shared_with)


def _usable(known: tuple[dict[str, Any], str, frozenset[str]], tenant: str) -> bool:
    """A group is usable by its tenant and by the tenants it is shared with."""
    return known[1] == tenant or tenant in known[2]
