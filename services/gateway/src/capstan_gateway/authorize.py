"""The one place every /api/v1 request is authorized (added to every router by ``api_router``).

1. the route's action from ``capstan_core.actions`` (a route missing there is refused: fail closed);
2. its scope: ``public`` needs nothing, ``self`` any account, ``operator`` the operator's tenant;
3. for a route on one object (``{id}``): the object's tenant and tags, from its owner. Another tenant's
   object is ``404`` (as if it did not exist); a resource group shared with the caller's tenant counts
   as its own for reading and for submitting work;
4. the account's policies (``capstan_core.authz``): deny wins, nothing allowed is ``403``.
Refusals and every write are recorded in the audit records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from capstan_core import actions, authz
from capstan_core.errors import DomainError, NotFound, PermissionDenied
from capstan_proto import inference_pb2, registry_pb2, scheduler_pb2, trainer_pb2

from .auth import Principal, current_principal
from .identity.store import AuditRecord, IdentityStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owned:
    tenant: str
    tags: dict[str, str]
    shared_with: tuple[str, ...] = ()
    account: str = ""  # for an account or a key: the account it is (of)


# What an account may always do about itself, whatever its policies: see itself, its keys, its password.
SELF_ACTIONS = frozenset({
    "gateway:GetAccount", "gateway:SetPassword", "gateway:CreateKey", "gateway:ListKeys", "gateway:UpdateKey",
    "gateway:DeleteKey",
})


Resolver = Callable[[Request, str], Awaitable[Owned]]


async def _train(request: Request, object_id: str) -> Owned:
    t = await request.app.state.clients.trainer.get_training_task(trainer_pb2.GetTrainingTaskRequest(id=object_id))
    return Owned(t.tenant, dict(t.tags))


async def _rsg(request: Request, object_id: str) -> Owned:
    g = await request.app.state.clients.scheduler.get_resource_group(
        scheduler_pb2.GetResourceGroupRequest(id=object_id))
    return Owned(g.tenant, dict(g.tags), tuple(g.shared_with))


async def _model(request: Request, object_id: str) -> Owned:
    registry = request.app.state.clients.registry
    if registry is None:
        raise NotFound(f"model {object_id} not found")
    m = await registry.get_model(registry_pb2.GetModelRequest(id=object_id))
    return Owned(m.tenant, dict(m.tags))


async def _service(request: Request, object_id: str) -> Owned:
    inference = request.app.state.clients.inference
    if inference is None:
        raise NotFound(f"service {object_id} not found")
    v = await inference.call(inference.stub.GetService, inference_pb2.ServiceRef(service_id=object_id))
    g = json.loads(v.service_json)
    return Owned(str(g.get("tenant", "")), dict(g.get("tags") or {}))


def _store(request: Request) -> IdentityStore:
    store: IdentityStore | None = request.app.state.authenticator.store
    if store is None:
        raise NotFound("accounts do not exist while authentication is disabled")
    return store


async def _account(request: Request, object_id: str) -> Owned:
    return Owned(_store(request).get_account(object_id).tenant, {}, account=object_id)


async def _key(request: Request, object_id: str) -> Owned:
    store = _store(request)
    account = store.get_key(object_id).account_id
    return Owned(store.get_account(account).tenant, {}, account=account)


async def _policy(request: Request, object_id: str) -> Owned:
    return Owned(_store(request).get_policy(object_id).tenant, {})


RESOLVERS: dict[str, Resolver] = {
    "train": _train, "rsg": _rsg, "model": _model, "account": _account, "key": _key, "policy": _policy,
    "service": _service,
}


def _needs_tags(principal: Principal) -> bool:
    return any(st.tags for p in principal.policies for st in p.statements)


async def authorize(request: Request, principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    route = request.scope.get("route")
    action = actions.rest_action(request.method, getattr(route, "path", ""))
    if action is None:  # a route nobody entered in the table: refuse rather than guess
        raise PermissionDenied(f"{request.method} {getattr(route, 'path', '?')} has no action; it is refused")
    request.state.action = action
    object_id = request.path_params.get(action.id_param, "") if action.id_param else ""
    resource = f"{action.resource}:{object_id or '*'}"
    try:
        owned = await _check(request, principal, action, object_id)
        tags = owned.tags if owned is not None else None
        own_self = owned is not None and owned.account == principal.account_id and action.name in SELF_ACTIONS
        if action.scope not in ("self", "public") and not own_self:
            decision = authz.decide(principal.policies, action.name, resource, tags)
            if not decision.allowed:
                raise PermissionDenied(decision.reason)
    except (PermissionDenied, NotFound) as e:
        _audit(request, principal, action, resource, allowed=False, detail=e.code)
        raise
    if action.access == actions.WRITE:
        _audit(request, principal, action, resource, allowed=True)
    return principal


async def _check(request: Request, principal: Principal, action: actions.Action, object_id: str) -> Owned | None:
    """Scope and ownership: the object (its tenant, tags) when one was needed."""
    if action.scope == "operator" and not principal.is_operator:
        raise PermissionDenied(f"{action.name} is the operator's")
    if not object_id or action.scope in ("self", "public"):
        return None
    if action.resource not in RESOLVERS or (
        principal.is_operator and not _needs_tags(principal) and action.service != "gateway"
    ):
        return None
    return await owned_object(request, principal, action.resource, object_id, write=action.access == actions.WRITE)


async def owned_object(request: Request, principal: Principal, resource: str, object_id: str, *, write: bool) -> Owned:
    """The object (its tenant and tags) if the principal's tenant may reach it; otherwise NotFound."""
    resolver = RESOLVERS.get(resource)
    if resolver is None:
        raise NotFound(f"{resource} {object_id} not found")
    try:
        owned = await resolver(request, object_id)
    except NotFound:
        raise NotFound(f"{resource} {object_id} not found") from None
    if principal.is_operator or owned.tenant == principal.tenant:
        return owned
    if principal.tenant in owned.shared_with and not write:
        return owned
    raise NotFound(f"{resource} {object_id} not found")  # another tenant's: as if it did not exist


def _audit(
    request: Request, principal: Principal, action: actions.Action, resource: str, *, allowed: bool, detail: str = ""
) -> None:
    store: IdentityStore | None = request.app.state.authenticator.store
    if store is None:
        return
    try:
        store.record(AuditRecord(
            account=principal.name, tenant=principal.tenant, key_id=principal.key_id, source=principal.source,
            action=action.name, object=resource, allowed=allowed, detail=detail))
    except DomainError:
        log.warning("could not record an audit entry for %s", action.name)


Authorized = Annotated[Principal, Depends(authorize)]
