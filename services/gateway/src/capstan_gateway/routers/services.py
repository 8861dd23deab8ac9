"""/api/v1/services: online services (owned by the inference service; SPEC §6)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request

from capstan_core.errors import Unavailable
from capstan_proto import inference_pb2 as pb

from ..clients import Clients, InferenceClient
from ..deps import CurrentPrincipal, IdempotencyKey, PageRequest
from ..schemas.services import (
    Autoscaling,
    KeyCreate,
    KeyUpdate,
    Scale,
    ServiceCreate,
    ServiceUpdate,
    VersionCreate,
    VersionUpdate,
    Weights,
)
from . import api_router

router = api_router("services")

ServiceId = Annotated[str, Path(min_length=1, max_length=20, pattern=r"^ms-[a-z0-9]{8}$", description="ms-xxxxxxxx")]
SubId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Json = dict[str, Any]


def _inference(request: Request) -> InferenceClient:
    clients: Clients = request.app.state.clients
    if clients.inference is None:
        raise Unavailable("the gateway is not configured with the inference service's address (CAPSTAN_INFERENCE_ADDR)")
    return clients.inference


Inference = Annotated[InferenceClient, Depends(_inference)]


async def _view(c: InferenceClient, rpc: str, req: Any) -> Json:
    v = await c.call(getattr(c.stub, rpc), req)
    out: Json = json.loads(v.service_json)
    if v.created_key_json:
        out["created_key"] = json.loads(v.created_key_json)
    return out


def _key(k: pb.ServiceKey, secret: str = "") -> Json:
    out: Json = {"id": k.key_id, "remark": k.remark, "enabled": k.enabled, "tokens_per_minute": k.tokens_per_minute,
                 "tokens_per_day": k.tokens_per_day, "created_at_ms": k.created_at_ms}
    if secret:
        out["secret"] = secret
    return out


@router.post("", status_code=201, summary="Create a service group with its first version")
async def create_service(body: ServiceCreate, c: Inference, idempotency_key: IdempotencyKey = "") -> Json:
    return await _view(c, "CreateService", pb.CreateServiceRequest(
        name=body.name, description=body.description, tags=body.tags, deployment_mode=body.deployment_mode,
        auth_enabled=body.auth_enabled, generate_key=body.generate_key, auto_stop_at_ms=body.auto_stop_at_ms,
        spec_json=json.dumps(body.spec), idempotency_key=idempotency_key))


@router.get("", summary="List service groups")
async def list_services(principal: CurrentPrincipal, c: Inference, page: PageRequest, only_mine: bool = False,
                        status: Annotated[str, Query(max_length=20)] = "") -> Json:
    r = await c.call(c.stub.ListServices, pb.ListServicesRequest(
        page=page, creator=principal.name if only_mine else "", status=status))
    return {"items": [json.loads(v.service_json) for v in r.items], "next_page_token": r.next_page_token,
            "total": r.total}


@router.get("/{id}", summary="Get a service group")
async def get_service(id: ServiceId, c: Inference) -> Json:
    return await _view(c, "GetService", pb.ServiceRef(service_id=id))


@router.patch("/{id}", summary="Change description, tags, auth on/off, the QPS cap or auto-stop")
async def update_service(id: ServiceId, body: ServiceUpdate, c: Inference) -> Json:
    return await _view(c, "UpdateService", pb.UpdateServiceRequest(service_id=id, changes_json=json.dumps(body.changes())))


@router.delete("/{id}", summary="Delete a service group (its replicas drain and stop first)")
async def delete_service(id: ServiceId, c: Inference) -> Json:
    return await _view(c, "DeleteService", pb.ServiceRef(service_id=id))


@router.post("/{id}/stop", summary="Stop a service group")
async def stop_service(id: ServiceId, c: Inference) -> Json:
    return await _view(c, "StopService", pb.ServiceRef(service_id=id))


@router.post("/{id}/start", summary="Start a stopped service group")
async def start_service(id: ServiceId, c: Inference) -> Json:
    return await _view(c, "StartService", pb.ServiceRef(service_id=id))


@router.post("/{id}/versions", status_code=201, summary="Add a version (traffic by weight)")
async def add_version(id: ServiceId, body: VersionCreate, c: Inference) -> Json:
    return await _view(c, "AddVersion", pb.AddVersionRequest(service_id=id, spec_json=json.dumps(body.spec),
                                                               weight=body.weight))


@router.patch("/{id}/versions/{version_id}", summary="Update a version: a rolling update (MaxSurge / MaxUnavailable)")
async def update_version(id: ServiceId, version_id: SubId, body: VersionUpdate, c: Inference) -> Json:
    return await _view(c, "UpdateVersion", pb.UpdateVersionRequest(service_id=id, version_id=version_id,
                                                                     spec_json=json.dumps(body.spec)))


@router.delete("/{id}/versions/{version_id}", summary="Delete a version")
async def delete_version(id: ServiceId, version_id: SubId, c: Inference) -> Json:
    return await _view(c, "DeleteVersion", pb.VersionRef(service_id=id, version_id=version_id))


@router.post("/{id}/scale", summary="Quick scale: set a version's replicas (turns autoscaling off)")
async def scale(id: ServiceId, body: Scale, c: Inference) -> Json:
    return await _view(c, "ScaleVersion", pb.ScaleVersionRequest(service_id=id, version_id=body.version_id,
                                                                   replicas=body.replicas))


@router.put("/{id}/autoscaling", summary="Set a version's autoscaling: manual, time rules or HPA")
async def set_autoscaling(id: ServiceId, body: Autoscaling, c: Inference) -> Json:
    return await _view(c, "SetAutoscaling", pb.SetAutoscalingRequest(
        service_id=id, version_id=body.version_id, autoscaling_json=json.dumps(body.autoscaling)))


@router.put("/{id}/weights", summary="Split traffic between versions by weight")
async def set_weights(id: ServiceId, body: Weights, c: Inference) -> Json:
    return await _view(c, "SetWeights", pb.SetWeightsRequest(service_id=id, weights=body.weights))


@router.post("/{id}/instances/{instance_id}/isolate", summary="Isolate an instance: it stays up, gets no new traffic")
async def isolate(id: ServiceId, instance_id: SubId, c: Inference) -> Json:
    return await _view(c, "IsolateReplica", pb.ReplicaRef(service_id=id, replica_id=instance_id))


@router.post("/{id}/instances/{instance_id}/unisolate", summary="Un-isolate an instance")
async def unisolate(id: ServiceId, instance_id: SubId, c: Inference) -> Json:
    return await _view(c, "UnisolateReplica", pb.ReplicaRef(service_id=id, replica_id=instance_id))


@router.post("/{id}/instances/{instance_id}/rebuild", summary="Rebuild an instance (a fresh one replaces it)")
async def rebuild(id: ServiceId, instance_id: SubId, c: Inference) -> Json:
    return await _view(c, "RebuildReplica", pb.ReplicaRef(service_id=id, replica_id=instance_id))


@router.get("/{id}/keys", summary="List a service's keys (never their secrets)")
async def list_keys(id: ServiceId, c: Inference) -> Json:
    return {"items": (await _view(c, "GetService", pb.ServiceRef(service_id=id)))["keys"]}


@router.post("/{id}/keys", status_code=201, summary="Create a key: its secret is in this answer only")
async def create_key(id: ServiceId, body: KeyCreate, c: Inference) -> Json:
    k = await c.call(c.stub.CreateKey, pb.CreateKeyRequest(service_id=id, remark=body.remark,
                                                           tokens_per_minute=body.tokens_per_minute,
                                                           tokens_per_day=body.tokens_per_day))
    return _key(k.key, k.secret)


@router.patch("/{id}/keys/{key_id}", summary="Enable/disable a key, change its remark or token limits")
async def update_key(id: ServiceId, key_id: SubId, body: KeyUpdate, c: Inference) -> Json:
    k = await c.call(c.stub.UpdateKey, pb.UpdateKeyRequest(service_id=id, key_id=key_id,
                                                           changes_json=json.dumps(body.changes())))
    return _key(k.key)


@router.delete("/{id}/keys/{key_id}", status_code=204, summary="Delete a key")
async def delete_key(id: ServiceId, key_id: SubId, c: Inference) -> None:
    await c.call(c.stub.DeleteKey, pb.KeyRef(service_id=id, key_id=key_id))


async def _events(c: InferenceClient, sid: str, records: bool) -> Json:
    r = await c.call(c.stub.ListServiceEvents, pb.ListServiceEventsRequest(service_id=sid, records=records))
    return {"items": [{"at_ms": e.at_ms, "level": e.level, "kind": e.kind, "resource": e.resource,
                       "message": e.message, "by": e.by} for e in r.items]}


@router.get("/{id}/records", summary="Update records: who changed what, and when")
async def records(id: ServiceId, c: Inference) -> Json:
    return await _events(c, id, True)


@router.get("/{id}/events", summary="Events of the last 24 hours")
async def events(id: ServiceId, c: Inference) -> Json:
    return await _events(c, id, False)


@router.get("/{id}/logs", summary="Instance logs: by instance, time range and keyword")
async def logs(
    id: ServiceId, c: Inference,
    instance: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$", description="empty: every instance")] = "",
    keyword: Annotated[str, Query(max_length=256)] = "",
    start_ms: Annotated[int, Query(ge=0, le=2**62)] = 0,
    end_ms: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    source: Annotated[str, Query(pattern=r"^(|platform|code|metrics)$")] = "",
    sidecar: Annotated[bool, Query(description="the sidecars' lines instead of the servers'")] = False,
) -> Json:
    r = await c.call(c.stub.GetServiceLogs, pb.GetServiceLogsRequest(
        service_id=id, replica_id=instance, keyword=keyword, start_ms=start_ms, end_ms=end_ms, limit=limit,
        after_seq=after_seq, source=source, sidecar=sidecar))
    return {"lines": [{"ts_ms": x.ts_ms, "instance": x.replica_id, "stream": x.stream, "line": x.line, "seq": x.seq}
                      for x in r.lines], "last_seq": r.last_seq}
