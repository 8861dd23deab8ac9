"""Identity changes (owner: the gateway's identity store, issue #8). Subjects ``capstan.evt.account.<id>``
``capstan.evt.key.<id>`` and ``capstan.evt.policy.<id>`` (custom policies).

The store (``capstan_gateway.identity``) stays the source of truth: these facts are written to its
outbox in the transaction of the change and appended to the log after it, so ``GET
/api/v1/audit/events`` shows them with the acting principal like every other commit. They never carry
a secret: no password, no password hash, no key secret (a key is named by its id only).
"""

from __future__ import annotations

from typing import Any

from ..events import Event, event

ACCOUNT = "account"
KEY = "key"
POLICY = "policy"


@event("AccountCreated", version=1)
class AccountCreated(Event):
    account_id: str
    name: str
    kind: str  # main | sub | collaborator
    tenant: str
    policies: list[str] = []
    at_ms: int


@event("AccountDisabled", version=1)
class AccountDisabled(Event):
    account_id: str
    tenant: str
    at_ms: int


@event("AccountEnabled", version=1)
class AccountEnabled(Event):
    account_id: str
    tenant: str
    at_ms: int


@event("AccountDeleted", version=1)
class AccountDeleted(Event):
    account_id: str
    tenant: str
    at_ms: int


@event("AccountPoliciesChanged", version=1)
class AccountPoliciesChanged(Event):
    """``attached``/``detached``: what changed; ``policies``: the whole list now."""

    account_id: str
    tenant: str
    attached: list[str] = []
    detached: list[str] = []
    policies: list[str] = []
    at_ms: int


@event("PasswordChanged", version=1)
class PasswordChanged(Event):
    """The account's password was set (its sessions end); never the password or its hash."""

    account_id: str
    tenant: str
    at_ms: int


@event("KeyCreated", version=1)
class KeyCreated(Event):
    key_id: str
    account_id: str
    tenant: str
    expires_at_ms: int = 0  # 0: never
    at_ms: int


@event("KeyDisabled", version=1)
class KeyDisabled(Event):
    key_id: str
    account_id: str
    tenant: str
    at_ms: int


@event("KeyEnabled", version=1)
class KeyEnabled(Event):
    key_id: str
    account_id: str
    tenant: str
    at_ms: int


@event("KeyDeleted", version=1)
class KeyDeleted(Event):
    key_id: str
    account_id: str
    tenant: str
    at_ms: int


@event("PolicyCreated", version=1)
class PolicyCreated(Event):
    """A tenant's custom policy; ``statements`` as stored (effects, actions, resources, tags)."""

    policy_id: str
    tenant: str
    name: str
    statements: list[dict[str, Any]] = []
    at_ms: int


@event("PolicyDeleted", version=1)
class PolicyDeleted(Event):
    policy_id: str
    tenant: str
    name: str
    at_ms: int
