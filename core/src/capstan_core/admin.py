"""The ``Admin`` gRPC service every service answers: its quarantine and its counters (issue #7), and the
event log read as the audit trail (issue #8: ``ListCommits``).

Registered by the shared ``Service`` runtime, so no service can lack it. The gateway aggregates it over
every service (``GET /api/v1/admin/quarantine``, ``capstan events quarantine``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Engine, MetaData, func, select

from capstan_proto import admin_pb2, admin_pb2_grpc

from .db import quarantine_table
from .errors import InvalidArgument, Unavailable
from .grpcutil import GrpcServer
from .identity import ADMIN, GATEWAY, Access, methods_of
from .metrics import Counters
from .paging import next_token, page_bounds
from .streams import EVENTS_STREAM

_quarantine = quarantine_table(MetaData())
SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
# The operator, and the gateway for its admin route (which checks the user is an admin).
ACCESS = Access(methods_of(SERVICE, ["ListQuarantine", "GetCounters", "ListCommits"], [GATEWAY, ADMIN]))
MAX_COMMITS = 500
SCAN_PER_CALL = 5_000  # messages one ListCommits call reads at most; the answer says where to resume


def list_quarantine(engine: Engine, page_size: int, page_token: str) -> tuple[list[dict[str, Any]], str, int]:
    """A page of the quarantine, in stream order."""
    size, offset = page_bounds(page_size, page_token)
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(_quarantine)).scalar() or 0)
        rows = conn.execute(
            select(_quarantine).order_by(_quarantine.c.seq, _quarantine.c.projection).limit(size).offset(offset)
        ).mappings().all()
    return [dict(r) for r in rows], next_token(offset, size, total), total


def _audited(seq: int, subject: str, data: bytes, req: admin_pb2.ListCommitsRequest) -> admin_pb2.AuditedCommit | None:
    """The commit as an audit record if it matches the request's filters (what cannot be read: skipped)."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        return None
    raw_by, raw_t = body.get("by"), body.get("t")
    by: dict[str, Any] = raw_by if isinstance(raw_by, dict) else {}
    at: int = raw_t if isinstance(raw_t, int) else 0
    types = [str(e.get("type")) for e in body["events"] if isinstance(e, dict)]
    if (req.account and by.get("account") != req.account) or (req.tenant and by.get("tenant") != req.tenant):
        return None
    if (req.event_type and req.event_type not in types) or at < req.since_ms or (req.until_ms and at >= req.until_ms):
        return None
    return admin_pb2.AuditedCommit(seq=seq, subject=subject, at_ms=at, by_json=json.dumps(by, sort_keys=True),
                                   event_types=types)


async def list_commits(js: JetStreamContext, stream: str, req: admin_pb2.ListCommitsRequest) -> admin_pb2.ListCommitsResponse:
    """Walk the log from ``after_seq`` (only the subject's messages when one is named), at most
    ``SCAN_PER_CALL`` messages, keeping those that match."""
    limit = min(max(req.limit or 100, 1), MAX_COMMITS)
    subject = req.subject or "capstan.evt.>"
    seq = req.after_seq + 1
    items: list[admin_pb2.AuditedCommit] = []
    for _ in range(SCAN_PER_CALL):
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return admin_pb2.ListCommitsResponse(items=items, next_after_seq=0)
        assert msg.seq is not None
        item = _audited(msg.seq, msg.subject or "", msg.data or b"", req)
        if item is not None:
            items.append(item)
        seq = msg.seq + 1
        if len(items) >= limit:
            break
    return admin_pb2.ListCommitsResponse(items=items, next_after_seq=seq - 1)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, service: str, engine: Engine, counters: Counters, js: JetStreamContext | None = None) -> None:
        self.service = service
        self.engine = engine
        self.counters = counters
        self.js = js

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


    async def ListCommits(self, req: admin_pb2.ListCommitsRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListCommitsResponse:  # noqa: N802
        if self.js is None:
            raise Unavailable(f"the {self.service} service does not read the event log here")
        if req.subject and not req.subject.startswith("capstan.evt."):
            raise InvalidArgument("subject: capstan.evt.<kind>.<id>", field="subject")
        return await list_commits(self.js, EVENTS_STREAM, req)


def register(
    server: GrpcServer, service: str, engine: Engine, counters: Counters, js: JetStreamContext | None = None
) -> None:
    server.add(admin_pb2_grpc.add_AdminServicer_to_server, AdminServicer(service, engine, counters, js), [SERVICE],
               ACCESS)
