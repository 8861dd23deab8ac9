"""gRPC surface of the trainer service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.training import StorageRow
from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, GATEWAY, NODE, Access, Caller, current_caller, methods_of, service_role
from capstan_core.logs import read_logs
from capstan_proto import common_pb2, trainer_pb2, trainer_pb2_grpc

from .app import TrainerApp
from .domain.price import Price
from .domain.task import SubmitTrainingTask, validate_resources
from .tensorboards import path_prefix

CHUNK = 1 << 20  # bytes per ReadOutput message
SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
# Users (through the gateway) and the operator manage tasks; a node agent reads the tasks placed
# on its node and reports their instances (both checked against the placement in the handlers).
ACCESS = Access({
    **methods_of(SERVICE, ["CreateTrainingTask", "CreateTrainingTasks", "ListTrainingTasks", "StopTrainingTask",
                           "GetLogs", "UpdateTrainingTask", "DeleteTrainingTask", "StartTrainingTask", "EstimatePrice",
                           "ListOutputs", "ReadOutput", "ListTaskEvents", "ListImages", "StartTensorBoard"],
               [GATEWAY, ADMIN]),
    # the registry checks a task has Succeeded before publishing its /opt/ml/model
    **methods_of(SERVICE, ["GetTrainingTask"], [GATEWAY, ADMIN, NODE, service_role("registry")]),
    **methods_of(SERVICE, ["ReportInstance", "GetTrainingTasks"], [NODE, ADMIN]),
})


def _price(p: Price) -> trainer_pb2.Price:
    return trainer_pb2.Price(per_hour=p.per_hour, currency=p.currency, per_instance_hour=p.per_instance_hour,
                             note=p.note)


def _task(d: dict[str, Any], price: Price | None = None) -> trainer_pb2.TrainingTask:
    return trainer_pb2.TrainingTask(
        description=d.get("description", ""), image=d.get("image", ""), mode=d.get("mode", ""),
        roles=d.get("roles") or {}, role_order=d.get("role_order") or [],
        storage=[trainer_pb2.StorageRow(**r) for r in d.get("storage") or ()], code=d.get("code", ""),
        output=d.get("output", ""), source_task_id=d.get("source_task_id", ""), queued_at_ms=d["queued_at_ms"],
        price=_price(price) if price is not None else None,
        id=d["id"], name=d["name"], resource_group_id=d["resource_group_id"], command=d["command"],
        hyperparameters_json=json.dumps(d["hyperparameters"]),
        resources=common_pb2.Resources(cpu=d["cpu"], memory_gib=d["memory_gib"], gpu_type=d["gpu_type"], gpu=d["gpu"]),
        instance_count=d["instance_count"], status=d["status"], exit_code=d["exit_code"] or 0,
        has_exit_code=d["exit_code"] is not None, attempt=d["attempt"], preemptions=d["preemptions"],
        restarts=d["restarts"], max_restarts=d["max_restarts"], restarts_used=d["restarts_used"], network=d["network"],
        failure_reason=d["failure_reason"], tags=d["tags"], creator=d["creator"], tenant=d.get("tenant", ""), created_at_ms=d["created_at_ms"],
        started_at_ms=d["started_at_ms"], ended_at_ms=d["ended_at_ms"], stop_grace_seconds=d["stop_grace_seconds"],
        instances=[
            trainer_pb2.TrainingInstance(
                index=i["idx"], node_id=i["node_id"], status=i["status"], exit_code=i["exit_code"] or 0,
                has_exit_code=i["exit_code"] is not None,
            )
            for i in d["instances"]
        ],
    )


def _command(req: trainer_pb2.CreateTrainingTaskRequest, caller: Caller) -> SubmitTrainingTask:
    """A create request as the submission it asks for (the creator and its tenant are the caller's, never
    a field; the id is the app's to derive from the idempotency key)."""
    creator = caller.acting
    r = req.resources
    order = list(req.role_order) or sorted(req.roles)
    return SubmitTrainingTask(
        task_id="", name=req.name, resource_group_id=req.resource_group_id, command=req.command,
        hyperparameters_json=req.hyperparameters_json,
        resources=ResourceSpec(cpu=r.cpu or 1.0, memory_gib=r.memory_gib or 1.0, gpu_type=r.gpu_type, gpu=r.gpu),
        instance_count=req.instance_count, tags=dict(req.tags), creator=creator,
        stop_grace_seconds=req.stop_grace_seconds, max_restarts=req.max_restarts, network=req.network or "isolated",
        description=req.description, image=req.image, mode=req.mode,
        roles={k: req.roles[k] for k in order if k in req.roles} | dict(req.roles),
        storage=tuple(StorageRow(kind=x.kind, purpose=x.purpose or "other", source=x.source, path=x.path,  # type: ignore[arg-type]
                                 readonly=x.readonly, branch=x.branch, credential=x.credential)
                      for x in req.storage),
        code=req.code, output=req.output, tenant=caller.owner_tenant,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, app: TrainerApp) -> None:
        self.app = app

    def _view(self, d: dict[str, Any]) -> trainer_pb2.TrainingTask:
        r = ResourceSpec(cpu=d["cpu"], memory_gib=d["memory_gib"], gpu_type=d["gpu_type"], gpu=d["gpu"])
        return _task(d, self.app.estimate(r, d["instance_count"]))

    async def CreateTrainingTask(self, req: trainer_pb2.CreateTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        return self._view(await self.app.submit(_command(req, current_caller()),
                                                idempotency_key=req.idempotency_key))

    async def CreateTrainingTasks(self, req: trainer_pb2.CreateTrainingTasksRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.CreateTrainingTasksResponse:
        caller = current_caller()
        items = await self.app.submit_many([_command(r, caller) for r in req.items], batch_key=req.idempotency_key)
        return trainer_pb2.CreateTrainingTasksResponse(items=[self._view(d) for d in items])

    async def UpdateTrainingTask(self, req: trainer_pb2.UpdateTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        await asyncio.to_thread(self.app.get_for_caller, req.id, current_caller())  # another tenant's: NotFound
        return self._view(await self.app.update_tags(req.id, dict(req.tags)))

    async def DeleteTrainingTask(self, req: trainer_pb2.DeleteTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.DeleteTrainingTaskResponse:
        await asyncio.to_thread(self.app.get_for_caller, req.id, current_caller())
        await self.app.delete(req.id, by=current_caller().acting)
        return trainer_pb2.DeleteTrainingTaskResponse()

    async def StartTrainingTask(self, req: trainer_pb2.StartTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        caller = current_caller()
        await asyncio.to_thread(self.app.get_for_caller, req.id, caller)
        return self._view(await self.app.start_again(req.id, caller, req.idempotency_key))

    async def EstimatePrice(self, req: trainer_pb2.EstimatePriceRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.Price:
        r = req.resources
        spec = ResourceSpec(cpu=r.cpu or 1.0, memory_gib=r.memory_gib or 1.0, gpu_type=r.gpu_type, gpu=r.gpu)
        validate_resources(spec)
        return _price(self.app.estimate(spec, req.instance_count or 1))

    async def ListOutputs(self, req: trainer_pb2.ListOutputsRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ListOutputsResponse:
        task = await asyncio.to_thread(self.app.get_for_caller, req.task_id, current_caller())
        files = await asyncio.to_thread(self.app.outputs.list, task, req.instance_index)
        return trainer_pb2.ListOutputsResponse(files=[
            trainer_pb2.OutputFile(instance_index=f.index, path=f.path, kind=f.kind, size=f.size, mtime_ms=f.mtime_ms)
            for f in files
        ])

    async def ReadOutput(self, req: trainer_pb2.ReadOutputRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[trainer_pb2.OutputChunk]:
        task = await asyncio.to_thread(self.app.get_for_caller, req.task_id, current_caller())
        f = await asyncio.to_thread(self.app.outputs.open, task, req.instance_index, req.path)
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield trainer_pb2.OutputChunk(data=chunk)
        finally:
            f.close()

    async def GetTrainingTask(self, req: trainer_pb2.GetTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        return self._view(await asyncio.to_thread(self.app.get_for_caller, req.id, current_caller()))

    async def GetTrainingTasks(self, req: trainer_pb2.GetTrainingTasksRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.GetTrainingTasksResponse:
        found = await asyncio.to_thread(self.app.get_many_for_caller, list(req.ids), current_caller())
        return trainer_pb2.GetTrainingTasksResponse(items=[self._view(d) for d in found])

    async def ListTrainingTasks(self, req: trainer_pb2.ListTrainingTasksRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ListTrainingTasksResponse:
        items, token, total = await asyncio.to_thread(
            self.app.list, page_size=req.page.page_size, page_token=req.page.page_token, creator=req.creator,
            tenant=current_caller().tenant,
            resource_group_id=req.resource_group_id, status=req.status,
        )
        return trainer_pb2.ListTrainingTasksResponse(items=[self._view(i) for i in items], next_page_token=token, total=total)

    async def StopTrainingTask(self, req: trainer_pb2.StopTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        await asyncio.to_thread(self.app.get_for_caller, req.id, current_caller())
        return self._view(await self.app.stop(req.id, by="user"))

    async def ReportInstance(self, req: trainer_pb2.ReportInstanceRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ReportInstanceResponse:
        status = await self.app.report_from(
            current_caller(), task_id=req.task_id, index=req.instance_index, node_id=req.node_id, state=req.state,
            exit_code=req.exit_code, message=req.message, at_ms=req.at_ms, attempt=req.attempt,
        )
        return trainer_pb2.ReportInstanceResponse(task_status=status)

    async def StartTensorBoard(self, req: trainer_pb2.StartTensorBoardRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TensorBoard:
        task = await asyncio.to_thread(self.app.get_for_caller, req.task_id, current_caller())
        port, ready = await asyncio.to_thread(self.app.tensorboards.start, task)
        return trainer_pb2.TensorBoard(port=port, ready=ready, path_prefix=path_prefix(req.task_id))

    async def ListImages(self, req: trainer_pb2.ListImagesRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ListImagesResponse:
        images = await asyncio.to_thread(self.app.images)
        return trainer_pb2.ListImagesResponse(items=[
            trainer_pb2.Image(name=i.name, kind=i.kind, description=i.description, frameworks=i.frameworks,
                              modes=i.modes, libraries=i.libraries, size_bytes=i.size_bytes) for i in images
        ])

    async def ListTaskEvents(self, req: trainer_pb2.ListTaskEventsRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ListTaskEventsResponse:
        await asyncio.to_thread(self.app.get_for_caller, req.task_id, current_caller())
        return trainer_pb2.ListTaskEventsResponse(items=[
            trainer_pb2.TaskEvent(at_ms=e.at_ms, level=e.level, type=e.type, message=e.message)
            for e in await self.app.events(req.task_id)
        ])

    async def GetLogs(self, req: trainer_pb2.GetLogsRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.GetLogsResponse:
        self.app.get_for_caller(req.task_id, current_caller())  # NotFound for an unknown (or another tenant's) task
        lines, last = await read_logs(
            self.app.ctx.js, req.task_id, start_ms=req.start_ms, end_ms=req.end_ms, keyword=req.keyword,
            instance_index=req.instance_index, after_seq=req.after_seq, limit=req.limit, source=req.source,
        )
        return trainer_pb2.GetLogsResponse(
            lines=[trainer_pb2.LogLine(ts_ms=x.ts_ms, instance_index=x.instance_index, stream=x.stream, line=x.line, seq=x.seq) for x in lines],
            last_seq=last,
        )


def register(app: TrainerApp, server: GrpcServer) -> None:
    server.add(
        trainer_pb2_grpc.add_TrainerServicer_to_server,
        TrainerServicer(app),
        [trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name],
    )
