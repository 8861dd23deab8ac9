"""The ``Admin`` gRPC service every service answers: its quarantine and its counters (issue #7).

Registered by the shared ``Service`` runtime, so no service can lack it. The gateway aggregates it over
every service (``GET /api/v1/admin/quarantine``, ``capstan events quarantine``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from sqlalchemy import Engine, MetaData, func, select

from capstan_proto import admin_pb2, admin_pb2_grpc

from .db import quarantine_table
from .grpcutil import GrpcServer
from .identity import ADMIN, GATEWAY, Access, methods_of
from .metrics import Counters
from .paging import next_token, page_bounds

_quarantine = quarantine_table(MetaData())
SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
# The operator, and the gateway for its admin route (which checks the user is an admin).
ACCESS = Access(methods_of(SERVICE, ["ListQuarantine", "GetCounters"], [GATEWAY, ADMIN]))


def list_quarantine(engine: Engine, page_size: int, page_token: str) -> tuple[list[dict[str, Any]], str, int]:
    """A page of the quarantine, in stream order."""
    size, offset = page_bounds(page_size, page_token)
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(_quarantine)).scalar() or 0)
        rows = conn.execute(
            select(_quarantine).order_by(_quarantine.c.seq, _quarantine.c.projection).limit(size).offset(offset)
        ).mappings().all()
    return [dict(r) for r in rows], next_token(offset, size, total), total


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, service: str, engine: Engine, counters: Counters) -> None:
        self.service = service
        self.engine = engine
        self.counters = counters

    async def ListQuarantine(self, req: admin_pb2.ListQuarantineRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListQuarantineResponse:  # noqa: N802
        items, token, total = await asyncio.to_thread(list_quarantine, self.engine, req.page.page_size, req.page.page_token)
        return admin_pb2.ListQuarantineResponse(
            service=self.service, items=[admin_pb2.QuarantinedCommit(**r) for r in items], next_page_token=token,
            total=total,
        )

    async def GetCounters(self, req: admin_pb2.GetCountersRequest, context: grpc.aio.ServicerContext) -> admin_pb2.GetCountersResponse:  # noqa: N802
        return admin_pb2.GetCountersResponse(
            service=self.service,
            counters=[admin_pb2.Counter(name=s.name, labels=s.labels, value=s.value) for s in self.counters.samples()],
        )


def register(server: GrpcServer, service: str, engine: Engine, counters: Counters) -> None:
    server.add(admin_pb2_grpc.add_AdminServicer_to_server, AdminServicer(service, engine, counters), [SERVICE], ACCESS)
