"""/api/v1/join-tokens: what an operator hands to a machine so its agent may join a resource group
(owned by the scheduler). The token itself is in the answer to the create, and never again."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, Field

from capstan_proto import scheduler_pb2

from ..deps import IdempotencyKey, Scheduler
from ..schemas.common import Id, RequestModel, from_ms, from_ms_required
from . import api_router

router = api_router("join-tokens")


class JoinTokenCreate(RequestModel):
    resource_group_id: Id
    description: str = Field(default="", max_length=200)
    ttl_seconds: int = Field(default=0, ge=0, le=365 * 24 * 3600, description="0: 24 hours")


class JoinToken(BaseModel):
    id: str
    resource_group_id: str
    description: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    uses: int = Field(description="nodes that joined with it")
    last_used_at: datetime | None
    token: str | None = Field(
        default=None, description="cjt.<id>.<secret>: only in the answer to the create; keep it secret"
    )

    @classmethod
    def from_proto(cls, t: scheduler_pb2.JoinToken) -> JoinToken:
        return cls(
            id=t.id, resource_group_id=t.resource_group_id, description=t.description, created_by=t.created_by,
            created_at=from_ms_required(t.created_at_ms), expires_at=from_ms(t.expires_at_ms), revoked=t.revoked,
            uses=t.uses, last_used_at=from_ms(t.last_used_at_ms), token=t.token or None,
        )


class JoinTokenList(BaseModel):
    items: list[JoinToken]


@router.post("", status_code=201, summary="Create a join token for a resource group (shown once)")
async def create_join_token(
    body: JoinTokenCreate, scheduler: Scheduler, idempotency_key: IdempotencyKey = ""
) -> JoinToken:
    req = scheduler_pb2.CreateJoinTokenRequest(
        resource_group_id=body.resource_group_id, description=body.description, ttl_seconds=body.ttl_seconds,
        idempotency_key=idempotency_key,
    )
    return JoinToken.from_proto(await scheduler.create_join_token(req))


@router.get("", summary="List join tokens (never their secrets)")
async def list_join_tokens(
    scheduler: Scheduler,
    resource_group_id: Annotated[str, Query(max_length=64, description="empty: every group")] = "",
) -> JoinTokenList:
    resp = await scheduler.list_join_tokens(scheduler_pb2.ListJoinTokensRequest(resource_group_id=resource_group_id))
    return JoinTokenList(items=[JoinToken.from_proto(t) for t in resp.items])


@router.delete("/{id}", summary="Revoke a join token (nodes that joined with it keep their certificates)")
async def revoke_join_token(id: Annotated[str, Path(min_length=1, max_length=64)], scheduler: Scheduler) -> JoinToken:
    return JoinToken.from_proto(await scheduler.revoke_join_token(scheduler_pb2.RevokeJoinTokenRequest(id=id)))
