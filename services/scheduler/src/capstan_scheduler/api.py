"""gRPC surface of the scheduler: thin translation between protobuf and the application layer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from capstan_core.contracts.scheduling import HealthCheckResult
from capstan_core.errors import FailedPrecondition, NotFound, PermissionDenied
from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, ANONYMOUS, GATEWAY, NODE, Access, current_caller, methods_of, service_role
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from .app import SchedulerApp
from .node_auth import node_id_for, require_own_node

SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
# Who may call what: users through the gateway and the operator manage groups and nodes; the
# trainer and inference services check a group exists; a node agent (its own node only, checked
# in the handlers) joins, heartbeats and reads its assignments; anyone holding a join token may
# bootstrap, on the TLS-only port.
ACCESS = Access({
    **methods_of(SERVICE, [
        "CreateResourceGroup", "ListResourceGroups", "UpdateResourceGroup", "DeleteResourceGroup", "ReleaseNodes",
        "ShareResourceGroup",
        "GetQueue", "ListNodes", "ListHealthChecks", "RemoveNodeRecord", "CreateJoinToken", "ListJoinTokens",
        "RevokeJoinToken",
    ], [GATEWAY, ADMIN]),
    **methods_of(SERVICE, ["GetResourceGroup"], [GATEWAY, ADMIN, service_role("trainer"), service_role("inference")]),
    **methods_of(SERVICE, ["JoinNode", "Heartbeat", "ReportHealthCheck", "ListNodeAssignments"], [NODE, ADMIN]),
    **methods_of(SERVICE, ["BootstrapNode"], [ANONYMOUS, ADMIN]),
})


def _rg(d: dict[str, Any]) -> scheduler_pb2.ResourceGroup:
    return scheduler_pb2.ResourceGroup(
        id=d["id"], name=d["name"], tags=json.loads(d["tags"]), policy_json=d["policy"], creator=d["creator"],
        created_at_ms=d["created_at_ms"], node_count=d["node_count"], description=d["description"],
        tenant=d.get("tenant", ""), shared_with=json.loads(d.get("shared_with") or "[]"),
    )


def _node(d: dict[str, Any]) -> scheduler_pb2.Node:
    return scheduler_pb2.Node(
        id=d["id"], resource_group_id=d["resource_group_id"], name=d["name"], state=d["state"], cpu=d["cpu"],
        memory_gib=d["memory_gib"], gpus=d["gpus"], cpu_allocated=d["cpu_allocated"],
        memory_gib_allocated=d["memory_gib_allocated"], gpus_allocated=d["gpus_allocated"], agent_kind=d["agent_kind"],
        last_heartbeat_ms=d["last_heartbeat_ms"], joined_at_ms=d["joined_at_ms"], state_reason=d["state_reason"],
        state_changed_at_ms=d["state_changed_at_ms"], capabilities=d.get("capabilities", []),
    )


def _checks(items: Any) -> list[HealthCheckResult]:
    return [HealthCheckResult(name=c.name, ok=c.ok, detail=c.detail) for c in items]


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, app: SchedulerApp) -> None:
        self.app = app

    async def CreateResourceGroup(self, req: scheduler_pb2.CreateResourceGroupRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ResourceGroup:  # noqa: N802
        d = await self.app.create_resource_group(
            name=req.name, description=req.description, tags=dict(req.tags), policy_json=req.policy_json,
            creator=current_caller().acting, idempotency_key=req.idempotency_key, tenant=current_caller().owner_tenant,
        )
        return _rg(d)

    async def ShareResourceGroup(self, req: scheduler_pb2.ShareResourceGroupRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ResourceGroup:  # noqa: N802
        caller = current_caller()
        if caller.tenant:  # only the operator (and the platform's tools) share groups between tenants
            raise PermissionDenied("only the operator shares resource groups with other tenants")
        return _rg(await self.app.share_resource_group(req.id, list(req.tenants)))

    async def GetResourceGroup(self, req: scheduler_pb2.GetResourceGroupRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ResourceGroup:  # noqa: N802
        return _rg(await asyncio.to_thread(self.app.get_resource_group, req.id, current_caller().tenant))

    async def ListResourceGroups(self, req: scheduler_pb2.ListResourceGroupsRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ListResourceGroupsResponse:  # noqa: N802
        items, token, total = await asyncio.to_thread(
            self.app.list_resource_groups, req.page.page_size, req.page.page_token, current_caller().tenant)
        return scheduler_pb2.ListResourceGroupsResponse(items=[_rg(i) for i in items], next_page_token=token, total=total)

    def _check_owner(self, rg_id: str, *, write: bool) -> None:
        """A user acts only on its tenant's groups (reads also on those shared with it); others do not exist."""
        tenant = current_caller().tenant
        if tenant:
            d = self.app.get_resource_group(rg_id, tenant)
            if write and d["tenant"] != tenant:
                raise NotFound(f"resource group {rg_id} does not exist")

    async def UpdateResourceGroup(self, req: scheduler_pb2.UpdateResourceGroupRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ResourceGroup:  # noqa: N802
        await asyncio.to_thread(self._check_owner, req.id, write=True)
        d = await self.app.update_resource_group(
            req.id,
            name=req.name if req.HasField("name") else None,
            description=req.description if req.HasField("description") else None,
            tags=dict(req.tags) if req.set_tags else None,
            policy_json=req.policy_json if req.HasField("policy_json") else None,
        )
        return _rg(d)

    async def DeleteResourceGroup(self, req: scheduler_pb2.DeleteResourceGroupRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.DeleteResourceGroupResponse:  # noqa: N802
        await asyncio.to_thread(self._check_owner, req.id, write=True)
        await self.app.delete_resource_group(req.id)
        return scheduler_pb2.DeleteResourceGroupResponse()

    async def ReleaseNodes(self, req: scheduler_pb2.ReleaseNodesRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ReleaseNodesResponse:  # noqa: N802
        items = await self.app.release_nodes(list(req.node_ids))
        return scheduler_pb2.ReleaseNodesResponse(items=[_node(i) for i in items])

    async def GetQueue(self, req: scheduler_pb2.GetQueueRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.QueueView:  # noqa: N802
        """A user sees its own tenant's work in full; another tenant's (a shared group) only as an
        anonymous entry (position, priority, lane, size: no id, kind, reason or time) and, on the node
        board, as a count. The operator and the platform see everything."""
        await asyncio.to_thread(self._check_owner, req.resource_group_id, write=False)
        tenant = current_caller().tenant
        try:
            report, extra = await asyncio.to_thread(self.app.queue, req.resource_group_id, bool(tenant))
        except FailedPrecondition:
            if tenant:  # the reason may name another tenant's workload
                raise FailedPrecondition(f"resource group {req.resource_group_id} cannot be scheduled now; "
                                         "the operator's view of its queue says why") from None
            raise
        rows, names = extra["workloads"], extra["node_names"]

        def theirs(workload_id: str) -> bool:
            return bool(tenant) and rows.get(workload_id, {}).get("tenant", "") != tenant

        # a reason may name the work ahead ("behind <id>", preempted victims): never another tenant's
        named = {e.workload_id for e in report.items} | {w for n in report.nodes for w in n.workloads}
        foreign = sorted((w for w in named if theirs(w)), key=len, reverse=True)

        def said(reason: str) -> str:
            for w in foreign:
                reason = reason.replace(w, "another tenant's work")
            return reason

        items = []
        for e in report.items:
            w = rows.get(e.workload_id, {})
            resources = common_pb2.Resources(cpu=w.get("cpu", 0), memory_gib=w.get("memory_gib", 0),
                                             gpu_type=w.get("gpu_type", ""), gpu=w.get("gpu", 0))
            if theirs(e.workload_id):
                items.append(scheduler_pb2.QueuedItem(
                    priority=e.priority, position=e.position, card_type=e.card_type, resources=resources,
                    instance_count=w.get("instance_count", 0), other_tenant=True, reason="another tenant's work"))
                continue
            items.append(scheduler_pb2.QueuedItem(
                workload_id=e.workload_id, kind=e.kind, priority=e.priority, position=e.position, card_type=e.card_type,
                reason=said(e.reason), submitted_at_ms=w.get("submitted_at_ms", 0), resources=resources,
                instance_count=w.get("instance_count", 0),
            ))
        return scheduler_pb2.QueueView(
            resource_group_id=req.resource_group_id, queue_mode=report.mode, items=items,
            lanes=[
                scheduler_pb2.LaneView(card_type=lane.card_type, total_cards=lane.total_cards,
                                       whole_machine_free_cards=lane.whole_machine_free_cards,
                                       fragment_free_cards=lane.fragment_free_cards)
                for lane in report.lanes if lane.resource_group == req.resource_group_id
            ],
            nodes=[
                scheduler_pb2.NodeBoard(node_id=n.node_id, name=names.get(n.node_id, ""), state=n.state, cpu=n.cpu,
                                        cpu_free=n.cpu_free, memory_gib=n.memory_gib, memory_gib_free=n.memory_gib_free,
                                        gpus=n.gpus, gpus_free=n.gpus_free,
                                        workloads=[w for w in n.workloads if not theirs(w)],
                                        other_tenant_workloads=sum(1 for w in n.workloads if theirs(w)))
                for n in report.nodes
            ],
        )

    async def JoinNode(self, req: scheduler_pb2.JoinNodeRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.Node:  # noqa: N802
        require_own_node(node_id_for(req.resource_group_id, req.name))
        d = await self.app.join_node(
            rg_id=req.resource_group_id, name=req.name, agent_kind=req.agent_kind or "trainer", cpu=req.cpu,
            memory_gib=req.memory_gib, gpus=dict(req.gpus), checks=_checks(req.checks),
            capabilities=list(req.capabilities),
        )
        return _node(d)

    async def ReportHealthCheck(self, req: scheduler_pb2.ReportHealthCheckRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.Node:  # noqa: N802
        require_own_node(req.node_id)
        return _node(await self.app.report_health(req.node_id, _checks(req.checks)))

    async def RemoveNodeRecord(self, req: scheduler_pb2.RemoveNodeRecordRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.Node:  # noqa: N802
        return _node(await self.app.remove_node_record(req.node_id))

    async def ListHealthChecks(self, req: scheduler_pb2.ListHealthChecksRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ListHealthChecksResponse:  # noqa: N802
        items, token, total = await asyncio.to_thread(
            self.app.list_health_checks, rg_id=req.resource_group_id, node_id=req.node_id, page_size=req.page.page_size, page_token=req.page.page_token
        )
        return scheduler_pb2.ListHealthChecksResponse(
            items=[
                scheduler_pb2.HealthCheckRecord(
                    node_id=r["node_id"], resource_group_id=r["resource_group_id"], ok=r["ok"], trigger=r["trigger"],
                    checks=[scheduler_pb2.HealthCheck(**c) for c in r["checks"]], at_ms=r["at_ms"],
                )
                for r in items
            ],
            next_page_token=token, total=total,
        )

    async def Heartbeat(self, req: scheduler_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.HeartbeatResponse:  # noqa: N802
        require_own_node(req.node_id)
        return scheduler_pb2.HeartbeatResponse(state=await self.app.heartbeat(req.node_id))

    async def ListNodes(self, req: scheduler_pb2.ListNodesRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ListNodesResponse:  # noqa: N802
        items, token, total = await asyncio.to_thread(
            self.app.list_nodes, req.resource_group_id, req.page.page_size, req.page.page_token, req.view or "active"
        )
        return scheduler_pb2.ListNodesResponse(items=[_node(i) for i in items], next_page_token=token, total=total)

    async def ListNodeAssignments(self, req: scheduler_pb2.ListNodeAssignmentsRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ListNodeAssignmentsResponse:  # noqa: N802
        require_own_node(req.node_id)
        items = [
            scheduler_pb2.Assignment(
                workload_id=a["workload_id"], workload_kind=a["kind"], instance_index=a["idx"],
                resources=common_pb2.Resources(cpu=a["cpu"], memory_gib=a["memory_gib"], gpu_type=a["gpu_type"], gpu=a["gpu"]),
                cards=[scheduler_pb2.CardShare(index=i, tenths=t) for i, t in json.loads(a["cards"] or "[]")],
            )
            for a in await asyncio.to_thread(self.app.node_assignments, req.node_id)
        ]
        return scheduler_pb2.ListNodeAssignmentsResponse(items=items)

    # -- join tokens and node bootstrap -------------------------------------------------
    async def CreateJoinToken(self, req: scheduler_pb2.CreateJoinTokenRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.JoinToken:  # noqa: N802
        return _token(await self.app.node_auth.create(
            rg_id=req.resource_group_id, description=req.description, ttl_s=req.ttl_seconds,
            idempotency_key=req.idempotency_key,
        ))

    async def ListJoinTokens(self, req: scheduler_pb2.ListJoinTokensRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.ListJoinTokensResponse:  # noqa: N802
        return scheduler_pb2.ListJoinTokensResponse(items=[_token(t) for t in self.app.node_auth.list(req.resource_group_id)])

    async def RevokeJoinToken(self, req: scheduler_pb2.RevokeJoinTokenRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.JoinToken:  # noqa: N802
        return _token(await self.app.node_auth.revoke(req.id))

    async def BootstrapNode(self, req: scheduler_pb2.BootstrapNodeRequest, context: grpc.aio.ServicerContext) -> scheduler_pb2.BootstrapNodeResponse:  # noqa: N802
        d = await self.app.node_auth.bootstrap(
            join_token=req.join_token, node_name=req.node_name, agent_kind=req.agent_kind, csr_pem=req.csr_pem
        )
        return scheduler_pb2.BootstrapNodeResponse(**d)


def _token(d: dict[str, Any]) -> scheduler_pb2.JoinToken:
    return scheduler_pb2.JoinToken(
        id=d["id"], resource_group_id=d["resource_group_id"], description=d["description"], created_by=d["created_by"],
        created_at_ms=d["created_at_ms"], expires_at_ms=d["expires_at_ms"], revoked=d["revoked"], uses=d["uses"],
        last_used_at_ms=d["last_used_at_ms"], token=d["token"],
    )


def register(app: SchedulerApp, server: GrpcServer) -> None:
    server.add(
        scheduler_pb2_grpc.add_SchedulerServicer_to_server,
        SchedulerServicer(app),
        [scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name],
    )
