"""gRPC surface of the registry."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, GATEWAY, Access, current_caller, methods_of, service_role
from capstan_proto import registry_pb2, registry_pb2_grpc

from .app import RegistryApp

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
_USER_METHODS = ["CreateModel", "GetModel", "ListModels", "DeleteModel", "PublishVersion", "GetVersion", "ListVersions",
                 "DeleteVersion", "ReadVersionFile"]
ACCESS = Access({
    **methods_of(SERVICE, _USER_METHODS, [GATEWAY, ADMIN]),
    # online services (the inference service) read a version as their model source
    **methods_of(SERVICE, ["ResolveModelSource"], [GATEWAY, ADMIN, service_role("inference")]),
})


def _model(d: dict[str, Any]) -> registry_pb2.Model:
    return registry_pb2.Model(
        id=d["id"], name=d["name"], description=d["description"], tags=d["tags"], creator=d["creator"],
        tenant=d.get("tenant", ""),
        created_at_ms=d["created_at_ms"], version_count=d["version_count"], latest_version=d["latest_version"],
    )


def _metadata(m: dict[str, Any]) -> registry_pb2.ModelMetadata:
    return registry_pb2.ModelMetadata(**m)


def _version(d: dict[str, Any]) -> registry_pb2.ModelVersion:
    lin = d["lineage"]
    return registry_pb2.ModelVersion(
        model_id=d["model_id"], model_name=d["model_name"], version=d["version"], description=d["description"],
        metadata=_metadata(d["metadata"]),
        lineage=registry_pb2.Lineage(
            task_id=lin["task_id"], instance_index=lin["instance_index"], task_name=lin["task_name"],
            hyperparameters_json=json.dumps(lin["hyperparameters"], sort_keys=True), data=lin["data"],
            image=lin["image"], command=lin["command"],
        ),
        files=[registry_pb2.ModelFile(**f) for f in d["files"]], size_bytes=d["size_bytes"], creator=d["creator"],
        created_at_ms=d["created_at_ms"],
    )


def _metadata_overrides(m: registry_pb2.ModelMetadata) -> dict[str, Any]:
    return {"framework": m.framework, "task_type": m.task_type, "base_model": m.base_model,
            "chat_template": m.chat_template, "parameter_count": m.parameter_count}


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, app: RegistryApp) -> None:
        self.app = app

    async def CreateModel(self, req: registry_pb2.CreateModelRequest, context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        return _model(await self.app.create(
            name=req.name, description=req.description, tags=dict(req.tags), creator=current_caller().acting,
            idempotency_key=req.idempotency_key, tenant=current_caller().owner_tenant,
        ))

    async def GetModel(self, req: registry_pb2.GetModelRequest, context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        return _model(await asyncio.to_thread(self.app.get, req.id))

    async def ListModels(self, req: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ListModelsResponse:
        items, token, total = await asyncio.to_thread(
            self.app.list_models, req.page.page_size, req.page.page_token, req.query, req.creator)
        return registry_pb2.ListModelsResponse(items=[_model(i) for i in items], next_page_token=token, total=total)

    async def DeleteModel(self, req: registry_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        return _model(await self.app.delete(req.id, current_caller().acting))

    async def PublishVersion(self, req: registry_pb2.PublishVersionRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ModelVersion:
        return _version(await self.app.publish(
            ref=req.model_id, task_id=req.task_id, instance_index=req.instance_index, description=req.description,
            metadata=_metadata_overrides(req.metadata), creator=current_caller().acting,
            idempotency_key=req.idempotency_key,
        ))

    async def GetVersion(self, req: registry_pb2.GetVersionRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ModelVersion:
        return _version(await asyncio.to_thread(self.app.get_version, req.model_id, req.version))

    async def ListVersions(self, req: registry_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ListVersionsResponse:
        items, token, total = await asyncio.to_thread(
            self.app.list_versions, req.model_id, req.page.page_size, req.page.page_token)
        return registry_pb2.ListVersionsResponse(items=[_version(i) for i in items], next_page_token=token, total=total)

    async def DeleteVersion(self, req: registry_pb2.DeleteVersionRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ModelVersion:
        return _version(await self.app.delete_version(req.model_id, req.version, current_caller().acting))

    async def ReadVersionFile(self, req: registry_pb2.ReadVersionFileRequest, context: grpc.aio.ServicerContext) -> registry_pb2.FileChunk:
        data, size, eof = await asyncio.to_thread(
            self.app.read_file, req.model_id, req.version, req.path, req.offset, req.limit)
        return registry_pb2.FileChunk(data=data, size=size, eof=eof)

    async def ResolveModelSource(self, req: registry_pb2.ResolveModelSourceRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ModelSource:
        s = await self.app.resolve_source(req.model_id, req.version, tenant=req.tenant, prefer=req.prefer_tenant)
        return registry_pb2.ModelSource(model_id=s["model_id"], version=s["version"], path=s["path"],
                                        metadata=_metadata(s["metadata"]))


def register(app: RegistryApp, server: GrpcServer) -> None:
    server.add(registry_pb2_grpc.add_RegistryServicer_to_server, RegistryServicer(app), [SERVICE])
