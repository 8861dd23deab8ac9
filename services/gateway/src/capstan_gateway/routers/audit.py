"""/api/v1/audit: who asked for what, on which object, when, and whether it was allowed."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from capstan_core.errors import FailedPrecondition

from ..authorize import Authorized
from ..identity.store import IdentityStore
from ..schemas.accounts import AuditEntry, AuditPage
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
