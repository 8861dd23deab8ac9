"""/api/v1/admin: operating the platform (issue #7). Admin principals only."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Query, Request

from capstan_core.errors import DomainError
from capstan_proto import admin_pb2, common_pb2

from ..clients import Clients, ServiceClient
from ..deps import CurrentPrincipal
from ..schemas.admin import QuarantinedCommit, QuarantineReport, ServiceCounter, ServiceReport
from . import api_router

router = api_router("admin")


async def _ask(client: ServiceClient, limit: int) -> tuple[admin_pb2.ListQuarantineResponse, admin_pb2.GetCountersResponse]:
    page = common_pb2.PageRequest(page_size=limit)
    return await asyncio.gather(
        client.call(client.admin.ListQuarantine, admin_pb2.ListQuarantineRequest(page=page)),
        client.call(client.admin.GetCounters, admin_pb2.GetCountersRequest()),
    )


@router.get("/quarantine", summary="Messages of the event log each service set aside, and every service's counters")
async def quarantine(
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=500, description="items per service, oldest first")] = 100,
) -> QuarantineReport:
    clients: Clients = request.app.state.clients
    services = clients.all()
    # Every service is asked at once; one that cannot answer is reported, the others still are.
    answers = await asyncio.gather(*(_ask(c, limit) for c in services), return_exceptions=True)
    report = QuarantineReport(items=[], counters=[], services=[])
    for client, answer in zip(services, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, DomainError):
                raise answer
            report.services.append(ServiceReport(service=client.service, reachable=False, error=answer.message,
                                                 quarantined=0))
            continue
        listed, counters = answer
        report.services.append(ServiceReport(service=client.service, reachable=True, error="", quarantined=listed.total))
        report.items.extend(QuarantinedCommit.from_proto(client.service, c) for c in listed.items)
        report.counters.extend(
            ServiceCounter(service=client.service, name=c.name, labels=dict(c.labels), value=c.value)
            for c in counters.counters
        )
    return report
