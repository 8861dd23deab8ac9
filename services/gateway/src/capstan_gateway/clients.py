"""One client per owning service: a traced channel, its stub, and error mapping at this edge.

Every route goes through these; a failed call becomes the domain error the
service raised, or ``Unavailable`` naming the service when it cannot be reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from capstan_core import credentials, grpcutil
from capstan_core.credentials import TlsCredentials
from capstan_core.errors import DomainError
from capstan_proto import (
    admin_pb2_grpc,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

from .errors import Internal, NotImplementedYet, ResourceExhausted
from .settings import GatewaySettings

R = TypeVar("R", bound=Message)

def rpc_error(service: str, e: grpc.aio.AioRpcError) -> DomainError:
    """Map a failed call to a domain error whose message a user can act on.

    A status the service raised itself (marked ``grpcutil.ANSWERED_BY``) keeps its message: an
    Unavailable from the trainer saying the scheduler is not reachable stays that. Anything else
    (nothing answered, the transport failed, too slow) names ``service``."""
    code = e.code()
    details = e.details() or ""
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
        return grpcutil.to_domain_error(e, service)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotImplementedYet(f"the {service} service does not implement this call yet")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(details or f"the {service} service is overloaded; retry later")
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        return Internal(f"the {service} service failed unexpectedly; see its log")
    if code in grpcutil.CODE_BY_GRPC:
        return grpcutil.to_domain_error(e, service)
    return Internal(f"the {service} service answered {code.name}: {details}")


class ServiceClient:
    """A channel to one service; ``call`` runs one unary RPC with a deadline and maps its failure."""

    service = "platform"

    def __init__(self, address: str, timeout: float, tls: TlsCredentials) -> None:
        self.address = address
        self.timeout = timeout
        # Mutual TLS as svc:gateway; the user a request acts for rides in each call's metadata.
        self.channel = grpcutil.channel(address, self.service, tls)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)  # every service answers Admin

    async def call(self, rpc: Callable[..., Awaitable[R]], request: Message) -> R:
        try:
            return await rpc(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise rpc_error(self.service, e) from e

    async def close(self) -> None:
        await self.channel.close()


class SchedulerClient(ServiceClient):
    service = "scheduler"

    def __init__(self, address: str, timeout: float, tls: TlsCredentials) -> None:
        super().__init__(address, timeout, tls)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)

    async def create_resource_group(self, req: scheduler_pb2.CreateResourceGroupRequest) -> scheduler_pb2.ResourceGroup:
        return await self.call(self.stub.CreateResourceGroup, req)

    async def get_resource_group(self, req: scheduler_pb2.GetResourceGroupRequest) -> scheduler_pb2.ResourceGroup:
        return await self.call(self.stub.GetResourceGroup, req)

    async def list_resource_groups(
        self, req: scheduler_pb2.ListResourceGroupsRequest
    ) -> scheduler_pb2.ListResourceGroupsResponse:
        return await self.call(self.stub.ListResourceGroups, req)

    async def update_resource_group(self, req: scheduler_pb2.UpdateResourceGroupRequest) -> scheduler_pb2.ResourceGroup:
        return await self.call(self.stub.UpdateResourceGroup, req)

    async def share_resource_group(self, req: scheduler_pb2.ShareResourceGroupRequest) -> scheduler_pb2.ResourceGroup:
        return await self.call(self.stub.ShareResourceGroup, req)

    async def delete_resource_group(
        self, req: scheduler_pb2.DeleteResourceGroupRequest
    ) -> scheduler_pb2.DeleteResourceGroupResponse:
        return await self.call(self.stub.DeleteResourceGroup, req)

    async def get_queue(self, req: scheduler_pb2.GetQueueRequest) -> scheduler_pb2.QueueView:
        return await self.call(self.stub.GetQueue, req)

    async def list_nodes(self, req: scheduler_pb2.ListNodesRequest) -> scheduler_pb2.ListNodesResponse:
        return await self.call(self.stub.ListNodes, req)

    async def release_nodes(self, req: scheduler_pb2.ReleaseNodesRequest) -> scheduler_pb2.ReleaseNodesResponse:
        return await self.call(self.stub.ReleaseNodes, req)

    async def remove_node_record(self, req: scheduler_pb2.RemoveNodeRecordRequest) -> scheduler_pb2.Node:
        return await self.call(self.stub.RemoveNodeRecord, req)

    async def list_health_checks(
        self, req: scheduler_pb2.ListHealthChecksRequest
    ) -> scheduler_pb2.ListHealthChecksResponse:
        return await self.call(self.stub.ListHealthChecks, req)

    async def create_join_token(self, req: scheduler_pb2.CreateJoinTokenRequest) -> scheduler_pb2.JoinToken:
        return await self.call(self.stub.CreateJoinToken, req)

    async def list_join_tokens(self, req: scheduler_pb2.ListJoinTokensRequest) -> scheduler_pb2.ListJoinTokensResponse:
        return await self.call(self.stub.ListJoinTokens, req)

    async def revoke_join_token(self, req: scheduler_pb2.RevokeJoinTokenRequest) -> scheduler_pb2.JoinToken:
        return await self.call(self.stub.RevokeJoinToken, req)


class TrainerClient(ServiceClient):
    service = "trainer"

    def __init__(self, address: str, timeout: float, tls: TlsCredentials) -> None:
        super().__init__(address, timeout, tls)
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)

    async def create_training_task(self, req: trainer_pb2.CreateTrainingTaskRequest) -> trainer_pb2.TrainingTask:
        return await self.call(self.stub.CreateTrainingTask, req)

    async def create_training_tasks(
        self, req: trainer_pb2.CreateTrainingTasksRequest
    ) -> trainer_pb2.CreateTrainingTasksResponse:
        return await self.call(self.stub.CreateTrainingTasks, req)

    async def get_training_task(self, req: trainer_pb2.GetTrainingTaskRequest) -> trainer_pb2.TrainingTask:
        return await self.call(self.stub.GetTrainingTask, req)

    async def list_training_tasks(
        self, req: trainer_pb2.ListTrainingTasksRequest
    ) -> trainer_pb2.ListTrainingTasksResponse:
        return await self.call(self.stub.ListTrainingTasks, req)

    async def stop_training_task(self, req: trainer_pb2.StopTrainingTaskRequest) -> trainer_pb2.TrainingTask:
        return await self.call(self.stub.StopTrainingTask, req)

    async def get_logs(self, req: trainer_pb2.GetLogsRequest) -> trainer_pb2.GetLogsResponse:
        return await self.call(self.stub.GetLogs, req)

    async def start_tensorboard(self, req: trainer_pb2.StartTensorBoardRequest) -> trainer_pb2.TensorBoard:
        return await self.call(self.stub.StartTensorBoard, req)

    @property
    def host(self) -> str:
        """The trainer's host (where the TensorBoards it starts listen, on loopback when it is local)."""
        return self.address.rsplit(":", 1)[0].strip("[]")

    async def list_images(self, req: trainer_pb2.ListImagesRequest) -> trainer_pb2.ListImagesResponse:
        return await self.call(self.stub.ListImages, req)

    async def list_task_events(self, req: trainer_pb2.ListTaskEventsRequest) -> trainer_pb2.ListTaskEventsResponse:
        return await self.call(self.stub.ListTaskEvents, req)

    async def update_training_task(self, req: trainer_pb2.UpdateTrainingTaskRequest) -> trainer_pb2.TrainingTask:
        return await self.call(self.stub.UpdateTrainingTask, req)

    async def delete_training_task(self, req: trainer_pb2.DeleteTrainingTaskRequest) -> None:
        await self.call(self.stub.DeleteTrainingTask, req)

    async def start_training_task(self, req: trainer_pb2.StartTrainingTaskRequest) -> trainer_pb2.TrainingTask:
        return await self.call(self.stub.StartTrainingTask, req)

    async def estimate_price(self, req: trainer_pb2.EstimatePriceRequest) -> trainer_pb2.Price:
        return await self.call(self.stub.EstimatePrice, req)

    async def list_outputs(self, req: trainer_pb2.ListOutputsRequest) -> trainer_pb2.ListOutputsResponse:
        return await self.call(self.stub.ListOutputs, req)

    async def read_output(self, req: trainer_pb2.ReadOutputRequest) -> AsyncIterator[bytes]:
        """The file's bytes, chunk by chunk. The first chunk is read before this returns, so a missing
        file or a refused path fails here (as its domain error), not in the middle of a response."""
        call = self.stub.ReadOutput(req, timeout=self.timeout * 30)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as e:
            raise rpc_error(self.service, e) from e

        async def chunks() -> AsyncIterator[bytes]:
            msg = first
            while msg is not grpc.aio.EOF:
                yield msg.data
                msg = await call.read()

        return chunks()


class RegistryClient(ServiceClient):
    service = "registry"

    def __init__(self, address: str, timeout: float, tls: TlsCredentials) -> None:
        super().__init__(address, timeout, tls)
        self.stub = registry_pb2_grpc.RegistryStub(self.channel)

    async def create_model(self, req: registry_pb2.CreateModelRequest) -> registry_pb2.Model:
        return await self.call(self.stub.CreateModel, req)

    async def get_model(self, req: registry_pb2.GetModelRequest) -> registry_pb2.Model:
        return await self.call(self.stub.GetModel, req)

    async def list_models(self, req: registry_pb2.ListModelsRequest) -> registry_pb2.ListModelsResponse:
        return await self.call(self.stub.ListModels, req)

    async def delete_model(self, req: registry_pb2.DeleteModelRequest) -> registry_pb2.Model:
        return await self.call(self.stub.DeleteModel, req)

    async def publish_version(self, req: registry_pb2.PublishVersionRequest) -> registry_pb2.ModelVersion:
        return await self.call(self.stub.PublishVersion, req)

    async def get_version(self, req: registry_pb2.GetVersionRequest) -> registry_pb2.ModelVersion:
        return await self.call(self.stub.GetVersion, req)

    async def list_versions(self, req: registry_pb2.ListVersionsRequest) -> registry_pb2.ListVersionsResponse:
        return await self.call(self.stub.ListVersions, req)

    async def delete_version(self, req: registry_pb2.DeleteVersionRequest) -> registry_pb2.ModelVersion:
        return await self.call(self.stub.DeleteVersion, req)

    async def read_version_file(self, req: registry_pb2.ReadVersionFileRequest) -> registry_pb2.FileChunk:
        return await self.call(self.stub.ReadVersionFile, req)


class InferenceClient(ServiceClient):
    service = "inference"

    def __init__(self, address: str, timeout: float, tls: TlsCredentials) -> None:
        super().__init__(address, timeout, tls)
        self.stub: Any = inference_pb2_grpc.InferenceStub(self.channel)


@dataclass
class Clients:
    """The gateway's clients, created in the app's lifespan (channels never open at import)."""

    scheduler: SchedulerClient
    trainer: TrainerClient
    registry: RegistryClient | None = None
    inference: InferenceClient | None = None

    @classmethod
    def connect(cls, settings: GatewaySettings) -> Clients:
        t = settings.rpc_timeout_s
        tls = credentials.load(settings.secrets_path, "gateway").tls
        return cls(
            scheduler=SchedulerClient(settings.scheduler_addr, t, tls),
            trainer=TrainerClient(settings.trainer_addr, t, tls),
            registry=RegistryClient(settings.registry_addr, t, tls) if settings.registry_addr else None,
            inference=InferenceClient(settings.inference_addr, t, tls) if settings.inference_addr else None,
        )

    def all(self) -> list[ServiceClient]:
        """Every service the gateway knows the address of."""
        return [c for c in (self.scheduler, self.trainer, self.registry, self.inference) if c is not None]

    async def close(self) -> None:
        for client in self.all():
            await client.close()
