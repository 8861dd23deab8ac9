"""/api/v1/policies: the presets and a tenant's custom policies (allow/deny × actions × resources, tags)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request, Response

from capstan_core import authz
from capstan_core.errors import FailedPrecondition, NotFound

from ..authorize import Authorized
from ..identity.store import CustomPolicy, IdentityStore
from ..schemas.accounts import Policy, PolicyCreate
from ..schemas.common import from_ms
from . import api_router

router = api_router("policies")
PolicyId = Annotated[str, Path(min_length=1, max_length=64)]


def _store(request: Request) -> IdentityStore:
    store: IdentityStore | None = request.app.state.authenticator.store
    if store is None:
        raise FailedPrecondition("policies do not exist while authentication is disabled")
    return store


def _custom(p: CustomPolicy) -> Policy:
    d = p.public()
    return Policy(id=p.id, tenant=p.tenant, name=p.name, statements=d["statements"], description=p.description,
                  preset=False, created_by=p.created_by, created_at=from_ms(p.created_at_ms))


def _preset(p: authz.Policy) -> Policy:
    return Policy(id=p.name, tenant="", name=p.name, statements=authz.statements_json(p.statements),
                  description="preset", preset=True, created_by="", created_at=None)


@router.post("", status_code=201, summary="Create a custom policy")
async def create_policy(body: PolicyCreate, principal: Authorized, request: Request) -> Policy:
    p = _store(request).create_policy(
        tenant=principal.tenant, name=body.name, statements=[s.model_dump() for s in body.statements],
        description=body.description, created_by=principal.account_id)
    return _custom(p)


@router.get("", summary="List the presets and this tenant's custom policies")
async def list_policies(principal: Authorized, request: Request) -> list[Policy]:
    presets = [_preset(p) for p in authz.PRESETS.values()]
    return presets + [_custom(p) for p in _store(request).list_policies(principal.tenant)]


@router.get("/{id}", summary="Get a policy (a preset by its name)")
async def get_policy(id: PolicyId, principal: Authorized, request: Request) -> Policy:
    if id in authz.PRESETS:
        return _preset(authz.PRESETS[id])
    return _custom(_store(request).get_policy(id))


@router.delete("/{id}", status_code=204, summary="Delete a custom policy (detach it first)")
async def delete_policy(id: PolicyId, principal: Authorized, request: Request) -> Response:
    if id in authz.PRESETS:
        raise NotFound(f"policy {id} not found (a preset cannot be deleted)")
    _store(request).delete_policy(id)
    return Response(status_code=204)
