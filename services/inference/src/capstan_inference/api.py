"""gRPC surface of the inference service."""

from __future__ import annotations

import asyncio

import grpc

from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, GATEWAY, Access, methods_of
from capstan_proto import inference_pb2, inference_pb2_grpc

from .app import InferenceApp

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
ACCESS = Access(methods_of(SERVICE, ["ListAgents"], [GATEWAY, ADMIN]))


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, app: InferenceApp) -> None:
        self.app = app

    async def ListAgents(self, req: inference_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ListAgentsResponse:
        return inference_pb2.ListAgentsResponse(items=[inference_pb2.InferenceAgent(**a) for a in await asyncio.to_thread(self.app.list_agents)])


def register(app: InferenceApp, server: GrpcServer) -> None:
    server.add(
        inference_pb2_grpc.add_InferenceServicer_to_server,
        InferenceServicer(app),
        [inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name],
    )
