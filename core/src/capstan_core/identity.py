"""Who is calling, on the internal gRPC plane, and what each kind of caller may call.

The caller is read from the peer certificate of the mutual-TLS connection (see
``pki``), never from a request field. The gateway acts for users: it alone may
name the acting user in the ``x-capstan-principal`` metadata, and only its
calls are believed about it. Every service declares an ``Access`` table:
method -> the roles allowed to call it; a method not in the table is refused.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import PermissionDenied, Unauthenticated

PRINCIPAL_METADATA = "x-capstan-principal"
SERVICES = ("scheduler", "trainer", "registry", "inference", "gateway")
_PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")

Kind = Literal["service", "node", "admin", "anonymous"]
Source = Literal["key", "session", "operator", "anonymous"]
MAX_PRINCIPAL_BYTES = 1024

# Roles an Access table speaks of.
GATEWAY = "svc:gateway"
ADMIN = "admin"
NODE = "node"
ANONYMOUS = "anonymous"
ANY_AUTHENTICATED = "*"  # every caller with a certificate of the platform's CA


def service_role(name: str) -> str:
    return f"svc:{name}"


@dataclass(frozen=True)
class Principal:
    """The user a gateway request acts for: sent to services as JSON in ``x-capstan-principal``.

    ``account``: the account id (recorded as the creator); ``tenant``: its main account's id, which owns
    every object the account creates; ``key_id``: the API key used (empty for a session); ``source``:
    how it authenticated; ``is_operator``: the install's first main account (sees every tenant).
    """

    account: str
    tenant: str
    key_id: str = ""
    source: Source = "key"
    is_operator: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {"account": self.account, "tenant": self.tenant, "key_id": self.key_id, "source": self.source,
             "is_operator": self.is_operator},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Principal:
        """Parse what the gateway sent; anything malformed is ``Unauthenticated``."""
        if len(text) > MAX_PRINCIPAL_BYTES:
            raise Unauthenticated("the gateway named a principal that is too long")
        try:
            d = json.loads(text)
        except ValueError:
            raise Unauthenticated("the gateway named a principal that is not JSON") from None
        if not isinstance(d, dict):
            raise Unauthenticated("the gateway named a principal that is not an object")
        account, tenant, key_id = d.get("account"), d.get("tenant"), d.get("key_id", "")
        source, is_operator = d.get("source", "key"), d.get("is_operator", False)
        if not isinstance(account, str) or not isinstance(tenant, str) or not all(
            _PRINCIPAL_RE.match(v) for v in (account, tenant)
        ):
            raise Unauthenticated("the gateway named a principal whose account or tenant is not a valid name")
        if not isinstance(key_id, str) or (key_id and not _PRINCIPAL_RE.match(key_id)):
            raise Unauthenticated("the gateway named a principal whose key id is not a valid name")
        if source not in ("key", "session", "operator", "anonymous") or not isinstance(is_operator, bool):
            raise Unauthenticated("the gateway named a principal with an unknown source")
        return cls(account=account, tenant=tenant, key_id=key_id, source=source, is_operator=is_operator)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one RPC.

    ``role``: ``svc:<name>``, ``node``, ``admin`` or ``anonymous``; ``node_id`` for a node;
    ``acting``: the principal the action is recorded under (the user the gateway acts for,
    else the caller itself).
    """

    kind: Kind
    role: str
    name: str
    acting: str
    node_id: str = ""
    principal: Principal | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def tenant(self) -> str:
        """The tenant whose objects this call may see; empty: every tenant's (the platform itself, the
        operator's tools, the operator's account)."""
        if self.principal is None or self.principal.is_operator:
            return ""
        return self.principal.tenant

    @property
    def owner_tenant(self) -> str:
        """The tenant an object created by this call belongs to (the operator's own tenant for them)."""
        return self.principal.tenant if self.principal is not None else ""


ANONYMOUS_CALLER = Caller("anonymous", ANONYMOUS, "anonymous", "anonymous")
# In-process callers (tests driving an app directly, a service's own loops) act as the platform.
PLATFORM_CALLER = Caller("service", "svc:platform", "platform", "platform")

_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("capstan_caller", default=PLATFORM_CALLER)


def current_caller() -> Caller:
    return _current.get()


def set_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    _current.reset(token)


_acting: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("capstan_acting_principal", default=None)


def acting_principal() -> Principal | None:
    """In the gateway: the authenticated user a request acts for (sent along on every gRPC call)."""
    return _acting.get()


def set_acting_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _acting.set(principal)


def caller_from_certificate(common_name: str | None, metadata: Mapping[str, str]) -> Caller:
    """The caller a verified certificate names; ``None``: the TLS-only bootstrap port (no certificate)."""
    if not common_name:
        return ANONYMOUS_CALLER
    if common_name == ADMIN:
        return Caller("admin", ADMIN, ADMIN, ADMIN)
    if common_name.startswith("node:"):
        node_id = common_name.removeprefix("node:")
        return Caller("node", NODE, common_name, common_name, node_id=node_id)
    if common_name.startswith("svc:") and common_name.removeprefix("svc:") in SERVICES:
        claimed = metadata.get(PRINCIPAL_METADATA, "")
        if common_name == GATEWAY and claimed:  # only the gateway may say whom it acts for
            principal = Principal.from_json(claimed)
            return Caller("service", common_name, common_name, principal.account, principal=principal)
        return Caller("service", common_name, common_name, common_name)
    raise Unauthenticated(f"certificate {common_name!r} names no known platform identity")


class Access:
    """Which roles may call which method of one gRPC service (full names: ``/pkg.Service/Method``)."""

    def __init__(self, rules: Mapping[str, Iterable[str]]) -> None:
        self._rules = {method: frozenset(roles) for method, roles in rules.items()}

    def merged(self, other: Access) -> Access:
        return Access({**self._rules, **other._rules})

    def extend(self, other: Access) -> None:
        """Add ``other``'s rules (a server adding a servicer after it was built)."""
        self._rules.update(other._rules)

    def methods(self) -> list[str]:
        return sorted(self._rules)

    def check(self, method: str, caller: Caller) -> None:
        roles = self._rules.get(method)
        if roles is None:
            raise PermissionDenied(f"{method} is not open to any caller")
        if caller.kind == "anonymous":
            if ANONYMOUS in roles:
                return
            raise Unauthenticated(f"{method} needs a platform certificate")
        if caller.role in roles or ANY_AUTHENTICATED in roles or (caller.is_admin and ADMIN in roles):
            return
        raise PermissionDenied(f"{caller.name} may not call {method}")


def methods_of(service_full_name: str, names: Iterable[str], roles: Iterable[str]) -> dict[str, frozenset[str]]:
    """``{"/pkg.Svc/A": roles, ...}`` for several methods that share their roles."""
    r = frozenset(roles)
    return {f"/{service_full_name}/{n}": r for n in names}
