"""gRPC surface of the inference service."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from capstan_core.errors import InvalidArgument
from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, GATEWAY, NODE, Access, current_caller, methods_of
from capstan_proto import common_pb2, inference_pb2, inference_pb2_grpc

from .app import InferenceApp, view
from .domain import group as domain
from .domain.spec import GROUP_QPS_CAP, PROTOCOL
from .replica_spec import served_name

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
MANAGEMENT = ["CreateService", "GetService", "ListServices", "UpdateService", "StopService", "StartService",
              "DeleteService", "AddVersion", "UpdateVersion", "DeleteVersion", "ScaleVersion", "SetAutoscaling",
              "SetWeights", "IsolateReplica", "UnisolateReplica", "RebuildReplica", "CreateKey", "UpdateKey",
              "DeleteKey", "ListServiceEvents", "GetServiceLogs"]
JSON_MAX = 256 * 1024
# Users (through the gateway) and the operator manage services; node agents read the replicas placed on
# their node and report them (checked against the placement in the handlers); gateways read the routes.
ACCESS = Access({
    **methods_of(SERVICE, ["ListAgents", *MANAGEMENT], [GATEWAY, ADMIN]),
    **methods_of(SERVICE, ["GetReplicaSpec", "ReportReplica"], [NODE, ADMIN]),
    **methods_of(SERVICE, ["ListRoutes"], [GATEWAY, ADMIN]),
})


def _json(text: str, field: str, default: Any) -> Any:
    if not text:
        return default
    if len(text) > JSON_MAX:
        raise InvalidArgument(f"{field} must be at most {JSON_MAX} bytes", field=field)
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{field} is not valid JSON: {e}", field=field) from e
    except RecursionError as e:
        raise InvalidArgument(f"{field} is nested too deeply", field=field) from e


def _obj(text: str, field: str) -> dict[str, Any]:
    value = _json(text, field, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object", field=field)
    return value


def _sv(d: dict[str, Any]) -> inference_pb2.ServiceView:
    key = d.pop("created_key", None)
    return inference_pb2.ServiceView(service_json=json.dumps(d), created_key_json=json.dumps(key) if key else "")


def _key(k: dict[str, Any]) -> inference_pb2.ServiceKey:
    return inference_pb2.ServiceKey(key_id=k["id"], remark=k["remark"], enabled=k["enabled"],
                                    tokens_per_minute=k["tokens_per_minute"], tokens_per_day=k["tokens_per_day"],
                                    created_at_ms=k["created_at_ms"])


def _probe(p: dict[str, Any] | None) -> inference_pb2.Probe | None:
    if not p:
        return None
    return inference_pb2.Probe(kind=p["kind"], path=p["path"], port=p["port"], command=p["command"],
                               initial_delay_s=p["initial_delay_s"], period_s=p["period_s"], timeout_s=p["timeout_s"],
                               failure_threshold=p["failure_threshold"], success_threshold=p["success_threshold"])


def route(g: domain.Group) -> inference_pb2.ServiceRoute:
    versions = []
    for v in domain.live_versions(g):
        spec, rl = v["spec"], v["spec"]["rate_limit"]
        versions.append(inference_pb2.RouteVersion(
            version_id=v["id"], weight=v["weight"], protocol=PROTOCOL[spec["runtime"]],
            served_model_name=served_name(g, spec),
            max_qps_per_replica=rl["value"] if rl["kind"] == "qps" else 0,
            max_concurrency_per_replica=rl["value"] if rl["kind"] == "concurrency" else 0,
            queue_size=rl["queue_size"], queue_timeout_ms=rl["queue_timeout_ms"]))
    replicas = [inference_pb2.RouteReplica(replica_id=r["id"], version_id=r["version_id"], address=r["address"],
                                           ready=domain.serving(r), isolated=r["isolated"])
                for r in sorted(g["replicas"].values(), key=lambda r: r["order"])
                if r["address"] and not r["draining_at_ms"]]
    keys = [inference_pb2.RouteKey(key_id=k["id"], secret_sha256=k["secret_sha256"], enabled=k["enabled"],
                                   tokens_per_minute=k["tokens_per_minute"], tokens_per_day=k["tokens_per_day"],
                                   remark=k["remark"]) for k in g["keys"].values()]
    cap = min(g["group_qps_limit"], GROUP_QPS_CAP)
    return inference_pb2.ServiceRoute(service_id=g["id"], name=g["name"], state=domain.status(g),
                                      auth_enabled=g["auth_enabled"], group_qps_limit=cap, versions=versions,
                                      replicas=replicas, keys=keys)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, app: InferenceApp) -> None:
        self.app = app

    async def ListAgents(self, req: inference_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ListAgentsResponse:
        return inference_pb2.ListAgentsResponse(items=[inference_pb2.InferenceAgent(**a) for a in await asyncio.to_thread(self.app.list_agents)])

    # -- node agents -------------------------------------------------------------------------------
    async def GetReplicaSpec(self, req: inference_pb2.GetReplicaSpecRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ReplicaSpec:
        s = await asyncio.to_thread(self.app.replica_spec, current_caller(), req.replica_id)
        probes = s.pop("probes")
        return inference_pb2.ReplicaSpec(
            **{k: v for k, v in s.items() if k != "resources"}, resources=common_pb2.Resources(**s["resources"]),
            startup_probe=_probe(probes.get("startup")), readiness_probe=_probe(probes.get("readiness")),
            liveness_probe=_probe(probes.get("liveness")))

    async def ReportReplica(self, req: inference_pb2.ReportReplicaRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ReportReplicaResponse:
        await self.app.report(current_caller(), rid=req.replica_id, state=req.state, address=req.address,
                              exit_code=req.exit_code, message=req.message, generation=req.generation,
                              cpu=req.cpu_usage, memory_gib=req.memory_usage_gib,
                              gpu_percent=req.gpu_percent if req.HasField("gpu_percent") else None)
        return inference_pb2.ReportReplicaResponse()

    # -- the gateway -------------------------------------------------------------------------------
    async def ListRoutes(self, req: inference_pb2.ListRoutesRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ListRoutesResponse:
        revision, groups = await asyncio.to_thread(self.app.routes, req.revision)
        if groups is None:
            return inference_pb2.ListRoutesResponse(revision=revision, unchanged=True)
        return inference_pb2.ListRoutesResponse(revision=revision, services=[route(g) for g in groups])

    # -- management --------------------------------------------------------------------------------
    async def CreateService(self, req: inference_pb2.CreateServiceRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.create(
            name=req.name, description=req.description, tags=dict(req.tags), deployment_mode=req.deployment_mode,
            auth_enabled=req.auth_enabled, auto_stop_at_ms=req.auto_stop_at_ms, spec_raw=_obj(req.spec_json, "spec"),
            generate_key=req.generate_key, creator=current_caller().acting, idempotency_key=req.idempotency_key))

    async def GetService(self, req: inference_pb2.ServiceRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await asyncio.to_thread(self.app.get, req.service_id))

    async def ListServices(self, req: inference_pb2.ListServicesRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ListServicesResponse:
        items, token, total = await asyncio.to_thread(self.app.list_services, page_size=req.page.page_size,
                                                      page_token=req.page.page_token, creator=req.creator,
                                                      status=req.status)
        return inference_pb2.ListServicesResponse(items=[_sv(d) for d in items], next_page_token=token, total=total)

    async def UpdateService(self, req: inference_pb2.UpdateServiceRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.update(req.service_id, _obj(req.changes_json, "changes"), current_caller().acting))

    async def StopService(self, req: inference_pb2.ServiceRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.set_state(req.service_id, "Stopped", current_caller().acting))

    async def StartService(self, req: inference_pb2.ServiceRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.set_state(req.service_id, "Running", current_caller().acting))

    async def DeleteService(self, req: inference_pb2.ServiceRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.set_state(req.service_id, "Deleting", current_caller().acting))

    async def AddVersion(self, req: inference_pb2.AddVersionRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.add_version(req.service_id, _obj(req.spec_json, "spec"), req.weight,
                                              current_caller().acting))

    async def UpdateVersion(self, req: inference_pb2.UpdateVersionRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.update_version(req.service_id, req.version_id, _obj(req.spec_json, "spec"),
                                                 current_caller().acting))

    async def DeleteVersion(self, req: inference_pb2.VersionRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.delete_version(req.service_id, req.version_id, current_caller().acting))

    async def ScaleVersion(self, req: inference_pb2.ScaleVersionRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.scale(req.service_id, req.version_id, req.replicas, current_caller().acting))

    async def SetAutoscaling(self, req: inference_pb2.SetAutoscalingRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.set_autoscaling(req.service_id, req.version_id,
                                                  _obj(req.autoscaling_json, "autoscaling"), current_caller().acting))

    async def SetWeights(self, req: inference_pb2.SetWeightsRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.set_weights(req.service_id, dict(req.weights), current_caller().acting))

    async def IsolateReplica(self, req: inference_pb2.ReplicaRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.isolate(req.service_id, req.replica_id, True, current_caller().acting))

    async def UnisolateReplica(self, req: inference_pb2.ReplicaRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.isolate(req.service_id, req.replica_id, False, current_caller().acting))

    async def RebuildReplica(self, req: inference_pb2.ReplicaRef, context: grpc.aio.ServicerContext) -> inference_pb2.ServiceView:
        return _sv(await self.app.rebuild(req.service_id, req.replica_id, current_caller().acting))

    async def CreateKey(self, req: inference_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext) -> inference_pb2.KeyView:
        k = await self.app.create_key(req.service_id, remark=req.remark, tokens_per_minute=req.tokens_per_minute,
                                      tokens_per_day=req.tokens_per_day, by=current_caller().acting)
        return inference_pb2.KeyView(key=_key(k), secret=k["secret"])

    async def UpdateKey(self, req: inference_pb2.UpdateKeyRequest, context: grpc.aio.ServicerContext) -> inference_pb2.KeyView:
        k = await self.app.update_key(req.service_id, req.key_id, _obj(req.changes_json, "changes"),
                                      current_caller().acting)
        return inference_pb2.KeyView(key=_key(k))

    async def DeleteKey(self, req: inference_pb2.KeyRef, context: grpc.aio.ServicerContext) -> inference_pb2.DeleteKeyResponse:
        await self.app.delete_key(req.service_id, req.key_id, current_caller().acting)
        return inference_pb2.DeleteKeyResponse()

    async def ListServiceEvents(self, req: inference_pb2.ListServiceEventsRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ListServiceEventsResponse:
        items = await self.app.history(req.service_id, records_only=req.records)
        return inference_pb2.ListServiceEventsResponse(items=[inference_pb2.ServiceEvent(**d) for d in items])

    async def GetServiceLogs(self, req: inference_pb2.GetServiceLogsRequest, context: grpc.aio.ServicerContext) -> inference_pb2.GetServiceLogsResponse:
        lines, last = await self.app.logs(req.service_id, req.replica_id, start_ms=req.start_ms, end_ms=req.end_ms,
                                          keyword=req.keyword, limit=req.limit, after_seq=req.after_seq,
                                          source=req.source)
        return inference_pb2.GetServiceLogsResponse(lines=[inference_pb2.ServiceLogLine(**x) for x in lines],
                                                    last_seq=last)


def register(app: InferenceApp, server: GrpcServer) -> None:
    server.add(
        inference_pb2_grpc.add_InferenceServicer_to_server,
        InferenceServicer(app),
        [inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name],
    )


__all__ = ["ACCESS", "register", "route", "view"]
