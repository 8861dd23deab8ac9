"""Join tokens (pure): what an operator hands to a machine so its agent may join a resource group.

A token reads ``cjt.<token-id>.<secret>``. The id is public (lists, audit); the secret is 192
random bits, shown once and stored only as its SHA-256 (a slow hash adds nothing for a secret
of that entropy). Like ``kubeadm join`` tokens, one token may join several machines until it
expires (24 h by default) or is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from capstan_core.contracts.scheduling import JoinTokenCreated, JoinTokenRevoked, JoinTokenUsed
from capstan_core.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from capstan_core.events import Event

PREFIX = "cjt"
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 365 * 24 * 3600
DESCRIPTION_MAX = 200
MAX_CSR_BYTES = 8192
_TOKEN_RE = re.compile(r"^cjt\.(jt-[0-9a-z]{8})\.([A-Za-z0-9_-]{16,128})$")
REFUSED = "the join token is not valid: ask the operator for a current one (capstan nodes join-token create)"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def format_token(token_id: str, secret: str) -> str:
    return f"{PREFIX}.{token_id}.{secret}"


def parse_token(token: str) -> tuple[str, str]:
    """(token id, secret); a malformed token is refused like a wrong one (nothing to learn from it)."""
    m = _TOKEN_RE.match(token.strip())
    if not m:
        raise Unauthenticated(REFUSED)
    return m[1], m[2]


@dataclass
class JoinTokenState:
    created: JoinTokenCreated | None = None
    revoked: bool = False
    uses: list[JoinTokenUsed] = field(default_factory=list)


def fold(events: Sequence[Event]) -> JoinTokenState:
    t = JoinTokenState()
    for e in events:
        if isinstance(e, JoinTokenCreated):
            t.created = e
        elif isinstance(e, JoinTokenRevoked):
            t.revoked = True
        elif isinstance(e, JoinTokenUsed):
            t.uses.append(e)
    return t


def decide_create(
    t: JoinTokenState, *, token_id: str, secret: str, rg_id: str, description: str, ttl_s: int, created_by: str,
    now_ms: int,
) -> list[Event]:
    if len(description) > DESCRIPTION_MAX:
        raise InvalidArgument(f"description must be at most {DESCRIPTION_MAX} characters", field="description")
    if not 0 <= ttl_s <= MAX_TTL_S:
        raise InvalidArgument(f"ttl_seconds must be 0 (24 hours) .. {MAX_TTL_S} (one year)", field="ttl_seconds")
    if t.created is not None:
        return []  # a retried create with the same idempotency key
    ttl = ttl_s or DEFAULT_TTL_S
    return [
        JoinTokenCreated(
            token_id=token_id, resource_group_id=rg_id, secret_sha256=secret_digest(secret), description=description,
            expires_at_ms=now_ms + ttl * 1000, created_by=created_by, at_ms=now_ms,
        )
    ]


def decide_revoke(t: JoinTokenState, *, token_id: str, by: str, now_ms: int) -> list[Event]:
    if t.created is None:
        raise NotFound(f"join token {token_id} does not exist")
    if t.revoked:
        return []
    return [JoinTokenRevoked(token_id=token_id, by=by, at_ms=now_ms)]


def check_usable(t: JoinTokenState, *, secret: str, now_ms: int) -> JoinTokenCreated:
    """The token's record if ``secret`` is its secret and it may still be used; refuses otherwise.
    Only a caller who proved the secret learns why (expired, revoked)."""
    if t.created is None or not hmac.compare_digest(secret_digest(secret), t.created.secret_sha256):
        raise Unauthenticated(REFUSED)
    if t.revoked:
        raise Unauthenticated("this join token was revoked; ask the operator for a current one")
    if t.created.expires_at_ms and now_ms >= t.created.expires_at_ms:
        raise Unauthenticated("this join token has expired; ask the operator for a current one")
    return t.created


def decide_use(
    t: JoinTokenState, *, token_id: str, node_id: str, node_name: str, certificate_sha256: str, now_ms: int
) -> list[Event]:
    if t.created is None or t.revoked:
        raise FailedPrecondition(f"join token {token_id} cannot be used")
    return [
        JoinTokenUsed(
            token_id=token_id, node_id=node_id, node_name=node_name, certificate_sha256=certificate_sha256,
            at_ms=now_ms,
        )
    ]
