"""gRPC surface of the registry."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, GATEWAY, Access, current_caller, methods_of
from capstan_proto import registry_pb2, registry_pb2_grpc

from .app import RegistryApp

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
ACCESS = Access(methods_of(SERVICE, ["CreateModel", "GetModel", "ListModels"], [GATEWAY, ADMIN]))


def _model(d: dict[str, Any]) -> registry_pb2.Model:
    return registry_pb2.Model(
        id=d["id"], name=d["name"], description=d["description"], tags=d["tags"], creator=d["creator"],
        created_at_ms=d["created_at_ms"],
    )


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, app: RegistryApp) -> None:
        self.app = app

    async def CreateModel(self, req: registry_pb2.CreateModelRequest, context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        return _model(await self.app.create(
            name=req.name, description=req.description, tags=dict(req.tags), creator=current_caller().acting,
            idempotency_key=req.idempotency_key,
        ))

    async def GetModel(self, req: registry_pb2.GetModelRequest, context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        return _model(await asyncio.to_thread(self.app.get, req.id))

    async def ListModels(self, req: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ListModelsResponse:
        items, token, total = await asyncio.to_thread(self.app.list, req.page.page_size, req.page.page_token)
        return registry_pb2.ListModelsResponse(items=[_model(i) for i in items], next_page_token=token, total=total)


def register(app: RegistryApp, server: GrpcServer) -> None:
    server.add(
        registry_pb2_grpc.add_RegistryServicer_to_server,
        RegistryServicer(app),
        [registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name],
    )
