"""/api/v1/access: who can do what on one object (the accounts of its tenant, each with the actions
its policies allow there)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from pydantic import BaseModel

from capstan_core import actions, authz
from capstan_core.errors import FailedPrecondition, InvalidArgument

from ..authorize import Authorized, owned_object
from ..identity.store import IdentityStore
from . import api_router

router = api_router("access")


class AccountAccess(BaseModel):
    account_id: str
    name: str
    kind: str
    actions: list[str]


class ObjectAccess(BaseModel):
    object: str
    tenant: str
    accounts: list[AccountAccess]


@router.get("", summary="Who can do what on one object: its tenant's accounts and the actions each may perform")
async def object_access(
    principal: Authorized,
    request: Request,
    object: Annotated[str, Query(min_length=3, max_length=100, description="<type>:<id>, e.g. train:train-1a2b3c4d")],
) -> ObjectAccess:
    store: IdentityStore | None = request.app.state.authenticator.store
    if store is None:
        raise FailedPrecondition("there are no accounts while authentication is disabled")
    kind, _, object_id = object.partition(":")
    if not object_id:
        raise InvalidArgument("object: <type>:<id>, e.g. train:train-1a2b3c4d", field="object")
    owned = await owned_object(request, principal, kind, object_id, write=False)
    names = sorted({a.name for a in actions.REST.values() if a.resource == kind and a.scope == "tenant"})
    out = []
    for acct in store.list_accounts(owned.tenant):
        if not acct.enabled:
            continue
        policies = store.policies_of(acct)
        allowed = [n for n in names if authz.decide(policies, n, object, owned.tags).allowed]
        out.append(AccountAccess(account_id=acct.id, name=acct.name, kind=acct.kind, actions=allowed))
    return ObjectAccess(object=object, tenant=owned.tenant, accounts=out)
