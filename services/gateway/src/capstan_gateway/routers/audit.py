"""/api/v1/audit: who asked for what, on which object, when, and whether it was allowed; and
/api/v1/audit/events: the event log itself, by who acted (each commit's "by"), object, event type, time."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Query, Request

from capstan_core.errors import FailedPrecondition, InvalidArgument
from capstan_core.streams import event_subject
from capstan_proto import admin_pb2

from ..authorize import Authorized
from ..clients import Clients
from ..identity.store import IdentityStore
from ..schemas.accounts import AuditEntry, AuditPage, CommitPage, LoggedCommit
from ..schemas.common import from_ms_required, parse_time
from . import api_router

router = api_router("audit")
Text = Annotated[str, Query(max_length=300)]


@router.get("", summary="Query the audit trail by actor, action, object and time (this tenant's; the operator: all)")
async def query_audit(
    principal: Authorized,
    request: Request,
    account: Text = "",
    action: Text = "",
    object: Text = "",
    tenant: Text = "",
    since: Annotated[str, Query(max_length=40, description="ISO-8601 or epoch ms")] = "",
    until: Annotated[str, Query(max_length=40, description="ISO-8601 or epoch ms")] = "",
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    store: IdentityStore | None = request.app.state.authenticator.store
    if store is None:
        raise FailedPrecondition("there is no audit trail while authentication is disabled")
    rows = store.query_audit(
        tenant=tenant if principal.is_operator else principal.tenant, account=account, action=action, obj=object,
        since_ms=parse_time(since, "since") if since else 0, until_ms=parse_time(until, "until") if until else 0,
        after_seq=after_seq, limit=limit)
    items = [AuditEntry(seq=r["seq"], at=from_ms_required(r["at_ms"]), account=r["account"], tenant=r["tenant"],
                        key_id=r["key_id"], source=r["source"], action=r["action"], object=r["object"],
                        allowed=bool(r["allowed"]), detail=r["detail"]) for r in rows]
    return AuditPage(items=items, next_after_seq=items[-1].seq if len(items) == limit else 0)


@router.get("/events", summary="The event log as the audit trail: commits by who acted, object, event type and time")
async def query_event_log(
    principal: Authorized,
    request: Request,
    account: Annotated[str, Query(max_length=64, description="the acting account's name")] = "",
    object: Annotated[str, Query(max_length=100, description="<kind>:<id>, e.g. train:train-1a2b3c4d")] = "",
    event_type: Annotated[str, Query(max_length=80, description="e.g. TrainingTaskSubmitted")] = "",
    tenant: Text = "",
    since: Annotated[str, Query(max_length=40, description="ISO-8601 or epoch ms")] = "",
    until: Annotated[str, Query(max_length=40, description="ISO-8601 or epoch ms")] = "",
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> CommitPage:
    subject = ""
    if object:
        kind, _, object_id = object.partition(":")
        if not kind.isalpha() or not object_id:
            raise InvalidArgument("object: <kind>:<id>, e.g. train:train-1a2b3c4d", field="object")
        subject = event_subject(kind, object_id)
    req = admin_pb2.ListCommitsRequest(
        subject=subject, account=account, tenant=tenant if principal.is_operator else principal.tenant,
        event_type=event_type, since_ms=parse_time(since, "since") if since else 0,
        until_ms=parse_time(until, "until") if until else 0, after_seq=after_seq, limit=limit)
    clients: Clients = request.app.state.clients
    scheduler = clients.scheduler  # every service reads the whole log; the scheduler is always there
    answer = await scheduler.call(scheduler.admin.ListCommits, req)
    return CommitPage(
        items=[LoggedCommit(seq=c.seq, subject=c.subject, at=from_ms_required(c.at_ms), by=json.loads(c.by_json or "{}"),
                            event_types=list(c.event_types)) for c in answer.items],
        next_after_seq=answer.next_after_seq)
