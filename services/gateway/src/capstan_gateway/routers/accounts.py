"""/api/v1/login, /whoami, /accounts, /keys: accounts (main = tenant, sub-accounts, collaborators),
their passwords, policies and API keys. Authorization is ``authorize``'s (ownership, policies); here
only what an account may never do whatever its policies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request, Response

from capstan_core import authz
from capstan_core.errors import FailedPrecondition, PermissionDenied

from ..auth import AccountAuthenticator, Principal, principal_of
from ..authorize import Authorized
from ..identity.store import IdentityStore
from ..schemas.accounts import (
    Account,
    AccountCreate,
    AccountUpdate,
    Key,
    KeyCreate,
    KeyUpdate,
    LoginRequest,
    NewKey,
    PasswordSet,
    PoliciesSet,
    Session,
    WhoAmI,
)
from ..schemas.common import from_ms_required
from . import api_router

login_router = api_router("login", public=True)
whoami_router = api_router("whoami")
accounts_router = api_router("accounts")
keys_router = api_router("keys")
routers = [login_router, whoami_router, accounts_router, keys_router]

AccountId = Annotated[str, Path(min_length=1, max_length=64)]


def _authenticator(request: Request) -> AccountAuthenticator:
    auth = request.app.state.authenticator
    if not isinstance(auth, AccountAuthenticator):
        raise FailedPrecondition("accounts do not exist while authentication is disabled")
    return auth


def _store(request: Request) -> IdentityStore:
    store = _authenticator(request).store
    assert store is not None
    return store


@login_router.post("", summary="Log in with an account's name and password: an expiring session token")
async def login(body: LoginRequest, request: Request) -> Session:
    token, expires, acct = _authenticator(request).login(body.name, body.password)
    return Session(token=token, expires_at=from_ms_required(expires), account=Account.of(acct.public()))


@whoami_router.get("", summary="The account this request acts as, and how it authenticated")
async def whoami(principal: Authorized, request: Request) -> WhoAmI:
    acct = _store(request).get_account(principal.account_id)
    return WhoAmI(account=Account.of(acct.public()), key_id=principal.key_id, source=principal.source,
                  operator_tenant=principal.is_operator)


@accounts_router.post("", status_code=201, summary="Create a sub-account or collaborator (or, the operator, a main account)")
async def create_account(body: AccountCreate, principal: Authorized, request: Request) -> Account:
    if body.kind == "main" and not principal.is_operator:
        raise PermissionDenied("only the operator creates main accounts (tenants)")
    if body.kind == "main" and body.policies:
        raise FailedPrecondition("a main account holds every right on its tenant; policies attach to sub-accounts")
    if body.policies or body.password:
        _require_full_access(principal, "attach policies or set a password")
    acct = _store(request).create_account(
        name=body.name, kind=body.kind, tenant=principal.tenant, password=body.password, policies=body.policies,
        description=body.description, created_by=principal.account_id)
    return Account.of(acct.public())


@accounts_router.get("", summary="List accounts (of this tenant; the operator: every tenant's)")
async def list_accounts(principal: Authorized, request: Request, tenant: str = "") -> list[Account]:
    scope = tenant if principal.is_operator else principal.tenant
    return [Account.of(a.public()) for a in _store(request).list_accounts(scope)]


@accounts_router.get("/{id}", summary="Get an account")
async def get_account(id: AccountId, principal: Authorized, request: Request) -> Account:
    return Account.of(_store(request).get_account(id).public())


def _require_full_access(principal: Principal, what: str) -> None:
    """Acting as another account or handing out rights: only a tenant's administrators (its main account,
    or an account holding FullAccess), whatever a custom policy allows, so no right is gained this way."""
    if principal.kind != "main" and authz.FULL_ACCESS not in principal.policies:
        raise PermissionDenied(f"only an account holding FullAccess may {what}")


def _guard_main(principal: Principal, store: IdentityStore, account_id: str, what: str) -> None:
    acct = store.get_account(account_id)
    if acct.kind == "main" and not principal.is_operator:
        raise PermissionDenied(f"only the operator may {what} a main account")
    if acct.is_operator:
        raise PermissionDenied(f"the operator's account cannot be {what}d")


@accounts_router.patch("/{id}", summary="Enable, disable or describe an account")
async def update_account(id: AccountId, body: AccountUpdate, principal: Authorized, request: Request) -> Account:
    store = _store(request)
    if body.enabled is not None:
        _guard_main(principal, store, id, "disable")
    return Account.of(store.update_account(id, enabled=body.enabled, description=body.description).public())


@accounts_router.delete("/{id}", status_code=204, summary="Delete an account and its keys (its objects stay its tenant's)")
async def delete_account(id: AccountId, principal: Authorized, request: Request) -> Response:
    store = _store(request)
    _guard_main(principal, store, id, "delete")
    store.delete_account(id)
    return Response(status_code=204)


@accounts_router.put("/{id}/password", status_code=204, summary="Set an account's password (ends its sessions)")
async def set_password(id: AccountId, body: PasswordSet, principal: Authorized, request: Request) -> Response:
    store = _store(request)
    if id != principal.account_id:
        _require_full_access(principal, "set another account's password")
        _guard_main(principal, store, id, "update")
    store.set_password(id, body.password)
    return Response(status_code=204)


@accounts_router.put("/{id}/policies", summary="Attach policies (presets or custom) to a sub-account or collaborator")
async def set_policies(id: AccountId, body: PoliciesSet, principal: Authorized, request: Request) -> Account:
    store = _store(request)
    if id == principal.account_id:
        raise PermissionDenied("an account cannot change its own policies")
    _require_full_access(principal, "attach policies")
    return Account.of(store.update_account(id, policies=body.policies).public())


@accounts_router.post("/{id}/keys", status_code=201, summary="Create an API key (its token is shown once)")
async def create_key(id: AccountId, body: KeyCreate, principal: Authorized, request: Request) -> NewKey:
    if id != principal.account_id:
        _require_full_access(principal, "create a key for another account")
    expires = int(body.expires_at.timestamp() * 1000) if body.expires_at else None
    key, token = _store(request).create_key(id, description=body.description, expires_at_ms=expires)
    return NewKey(**Key.of(key.public()).model_dump(), token=token)


@accounts_router.get("/{id}/keys", summary="List an account's API keys (never their secrets)")
async def list_keys(id: AccountId, principal: Authorized, request: Request) -> list[Key]:
    return [Key.of(k.public()) for k in _store(request).list_keys(id)]


@keys_router.patch("/{id}", summary="Enable, disable or describe an API key")
async def update_key(id: AccountId, body: KeyUpdate, principal: Authorized, request: Request) -> Key:
    return Key.of(_store(request).update_key(id, enabled=body.enabled, description=body.description).public())


@keys_router.delete("/{id}", status_code=204, summary="Delete an API key (rotate: create a new one, then delete the old)")
async def delete_key(id: AccountId, principal: Authorized, request: Request) -> Response:
    _store(request).delete_key(id)
    return Response(status_code=204)


__all__ = ["principal_of", "routers"]
