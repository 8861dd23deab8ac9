"""gRPC surface of the trainer service."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from capstan_core.contracts.common import ResourceSpec
from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import ADMIN, GATEWAY, NODE, Access, current_caller, methods_of, service_role
from capstan_proto import common_pb2, trainer_pb2, trainer_pb2_grpc

from .app import TrainerApp
from .logs import read_logs

SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
# Users (through the gateway) and the operator manage tasks; a node agent reads the tasks placed
# on its node and reports their instances (both checked against the placement in the handlers).
ACCESS = Access({
    **methods_of(SERVICE, ["CreateTrainingTask", "ListTrainingTasks", "StopTrainingTask", "GetLogs"], [GATEWAY, ADMIN]),
    # the registry checks a task has Succeeded before publishing its /opt/ml/model
    **methods_of(SERVICE, ["GetTrainingTask"], [GATEWAY, ADMIN, NODE, service_role("registry")]),
    **methods_of(SERVICE, ["ReportInstance"], [NODE, ADMIN]),
})


def _task(d: dict[str, Any]) -> trainer_pb2.TrainingTask:
    return trainer_pb2.TrainingTask(
        id=d["id"], name=d["name"], resource_group_id=d["resource_group_id"], command=d["command"],
        hyperparameters_json=json.dumps(d["hyperparameters"]),
        resources=common_pb2.Resources(cpu=d["cpu"], memory_gib=d["memory_gib"], gpu_type=d["gpu_type"], gpu=d["gpu"]),
        instance_count=d["instance_count"], status=d["status"], exit_code=d["exit_code"] or 0,
        has_exit_code=d["exit_code"] is not None, attempt=d["attempt"], preemptions=d["preemptions"],
        restarts=d["restarts"], max_restarts=d["max_restarts"], restarts_used=d["restarts_used"], network=d["network"],
        failure_reason=d["failure_reason"], tags=d["tags"], creator=d["creator"], created_at_ms=d["created_at_ms"],
        started_at_ms=d["started_at_ms"], ended_at_ms=d["ended_at_ms"], stop_grace_seconds=d["stop_grace_seconds"],
        instances=[
            trainer_pb2.TrainingInstance(
                index=i["idx"], node_id=i["node_id"], status=i["status"], exit_code=i["exit_code"] or 0,
                has_exit_code=i["exit_code"] is not None,
            )
            for i in d["instances"]
        ],
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, app: TrainerApp) -> None:
        self.app = app

    async def CreateTrainingTask(self, req: trainer_pb2.CreateTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        r = req.resources
        d = await self.app.submit(
            name=req.name, resource_group_id=req.resource_group_id, command=req.command,
            hyperparameters_json=req.hyperparameters_json,
            resources=ResourceSpec(cpu=r.cpu or 1.0, memory_gib=r.memory_gib or 1.0, gpu_type=r.gpu_type, gpu=r.gpu),
            instance_count=req.instance_count, tags=dict(req.tags), creator=current_caller().acting,
            stop_grace_seconds=req.stop_grace_seconds, idempotency_key=req.idempotency_key,
            max_restarts=req.max_restarts, network=req.network or "isolated",
        )
        return _task(d)

    async def GetTrainingTask(self, req: trainer_pb2.GetTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        return _task(await asyncio.to_thread(self.app.get_for_caller, req.id, current_caller()))

    async def ListTrainingTasks(self, req: trainer_pb2.ListTrainingTasksRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ListTrainingTasksResponse:
        items, token, total = await asyncio.to_thread(
            self.app.list, page_size=req.page.page_size, page_token=req.page.page_token, creator=req.creator,
            resource_group_id=req.resource_group_id, status=req.status,
        )
        return trainer_pb2.ListTrainingTasksResponse(items=[_task(i) for i in items], next_page_token=token, total=total)

    async def StopTrainingTask(self, req: trainer_pb2.StopTrainingTaskRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainingTask:
        return _task(await self.app.stop(req.id, by="user"))

    async def ReportInstance(self, req: trainer_pb2.ReportInstanceRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.ReportInstanceResponse:
        status = await self.app.report_from(
            current_caller(), task_id=req.task_id, index=req.instance_index, node_id=req.node_id, state=req.state,
            exit_code=req.exit_code, message=req.message, at_ms=req.at_ms, attempt=req.attempt,
        )
        return trainer_pb2.ReportInstanceResponse(task_status=status)

    async def GetLogs(self, req: trainer_pb2.GetLogsRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.GetLogsResponse:
        self.app.get(req.task_id)  # NotFound for an unknown task
        lines, last = await read_logs(
            self.app.ctx.js, req.task_id, start_ms=req.start_ms, end_ms=req.end_ms, keyword=req.keyword,
            instance_index=req.instance_index, after_seq=req.after_seq, limit=req.limit,
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
