"""Who is calling, on the internal gRPC plane, and what each kind of caller may call.

The caller is read from the peer certificate of the mutual-TLS connection (see
``pki``), never from a request field. The gateway acts for users: it alone may
name the acting user in the ``x-capstan-principal`` metadata, and only its
calls are believed about it. Every service declares an ``Access`` table:
method -> the roles allowed to call it; a method not in the table is refused.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import PermissionDenied, Unauthenticated

PRINCIPAL_METADATA = "x-capstan-principal"
SERVICES = ("scheduler", "trainer", "registry", "inference", "gateway")
_PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")

Kind = Literal["service", "node", "admin", "anonymous"]

# Roles an Access table speaks of.
GATEWAY = "svc:gateway"
ADMIN = "admin"
NODE = "node"
ANONYMOUS = "anonymous"
ANY_AUTHENTICATED = "*"  # every caller with a certificate of the platform's CA


def service_role(name: str) -> str:
    return f"svc:{name}"


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

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


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


_acting: contextvars.ContextVar[str] = contextvars.ContextVar("capstan_acting_principal", default="")


def acting_principal() -> str:
    """In the gateway: the authenticated user a request acts for (sent along on every gRPC call)."""
    return _acting.get()


def set_acting_principal(name: str) -> contextvars.Token[str]:
    return _acting.set(name)


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
        acting = common_name
        claimed = metadata.get(PRINCIPAL_METADATA, "")
        if common_name == GATEWAY and claimed:  # only the gateway may say whom it acts for
            if not _PRINCIPAL_RE.match(claimed):
                raise Unauthenticated("the gateway named a principal that is not a valid name")
            acting = claimed
        return Caller("service", common_name, common_name, acting)
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
