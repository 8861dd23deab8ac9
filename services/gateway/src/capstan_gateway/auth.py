"""Who is calling: a bearer token (an API key or a session) -> a ``Principal``.

Accounts live in the identity store (``identity/``). At first start the gateway creates the operator's
main account ``admin`` and writes, once, its first API key to ``<data_dir>/admin-token`` and its password
to ``<data_dir>/admin-password`` (both 0600; the ``capstan`` command reads the token as before). Every
failure is the same 401: a caller learns nothing about which keys or accounts exist.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from capstan_core import authz, identity
from capstan_core.credentials import replace_secret, write_secret
from capstan_core.errors import Unauthenticated

from .identity import credentials as cred
from .identity.store import OPERATOR_NAME, Account, IdentityStore, now_ms
from .settings import GatewaySettings

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
ADMIN_PASSWORD_FILE = "admin-password"  # noqa: S105 - a file name, not a secret
SESSION_KEY_FILE = "session-key"
MISSING = (
    "missing credentials: send 'Authorization: Bearer <token>' (an API key, or a session token from "
    f"logging in); the operator's first key is in the data dir's `{ADMIN_TOKEN_FILE}` file on the gateway host"
)
INVALID = (
    "the bearer token is not valid: unknown, wrong, expired, or its key or account is disabled or deleted "
    "(it is never shown back)"
)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request. ``name``: its account's name (the creator objects record;
    names are unique); ``account_id``: its id; ``tenant``: its main account's id."""

    name: str
    tenant: str
    account_id: str = ""
    key_id: str = ""
    source: identity.Source = "key"
    is_operator: bool = False  # an account of the operator's tenant: sees every tenant's objects
    kind: str = "main"
    policies: tuple[authz.Policy, ...] = ()

    @property
    def is_admin(self) -> bool:
        return self.is_operator

    def wire(self) -> identity.Principal:
        return identity.Principal(account=self.name, tenant=self.tenant, key_id=self.key_id, source=self.source,
                                  is_operator=self.is_operator)


ANONYMOUS = Principal(name="anonymous", tenant="anonymous", account_id="anonymous", source="anonymous",
                      is_operator=True, policies=(authz.FULL_ACCESS,))


class Authenticator(Protocol):
    store: IdentityStore | None

    def authenticate(self, token: str | None) -> Principal:
        """The principal holding ``token``; raises ``Unauthenticated`` otherwise."""
        ...


class AccountAuthenticator:
    """Tokens -> principals. A principal found is kept ``CACHE_S`` seconds (by the token's SHA-256, never
    the token), and forgotten at once when this process changes any account, key or policy; another
    gateway process sees a change within ``CACHE_S``."""

    CACHE_S = 2.0
    CACHE_MAX = 10_000
    # Password guessing: after this many failed logins for one name within the window, that name's logins
    # are refused until the window passes (by name, whether it exists or not: nothing is told).
    MAX_FAILED_LOGINS = 10
    FAILED_LOGIN_WINDOW_S = 300.0

    def __init__(self, store: IdentityStore, session_key: bytes, session_ttl_s: float) -> None:
        self.store: IdentityStore | None = store
        self._store = store
        self.session_key = session_key
        self.session_ttl_s = session_ttl_s
        self._cache: dict[bytes, tuple[Principal, float, int, int]] = {}  # digest -> principal, until, version, expiry
        self._failed: dict[str, list[float]] = {}  # name -> monotonic times of its recent failed logins

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated(MISSING)
        digest = hashlib.sha256(token.encode(errors="replace")).digest()
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now and hit[2] == self._store.version and hit[3] > now_ms():
            return hit[0]
        principal, expires_ms = self._authenticate(token)
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (principal, now + self.CACHE_S, self._store.version, expires_ms)
        return principal

    def _authenticate(self, token: str) -> tuple[Principal, int]:
        """The principal and when its credential expires (ms; far ahead for a key without expiry)."""
        parsed = cred.parse_token(token, self.session_key)
        if parsed is None:
            raise Unauthenticated(INVALID)
        now = now_ms()
        if parsed.kind == "key":
            found = self._store.key_secret_digest(parsed.key_id)
            if found is None or not cred.digest_matches(found[1], parsed.secret):
                raise Unauthenticated(INVALID)
            key = found[0]
            if not key.enabled or (key.expires_at_ms is not None and key.expires_at_ms <= now):
                raise Unauthenticated(INVALID)
            return self._principal(key.account_id, key_id=key.id, source="key"), key.expires_at_ms or 2**62
        if parsed.expires_ms <= now:
            raise Unauthenticated(INVALID)
        principal = self._principal(parsed.account, key_id="", source="session")
        acct = self._store.get_account(principal.account_id)
        if acct.session_epoch != parsed.epoch:
            raise Unauthenticated(INVALID)
        return principal, parsed.expires_ms

    def _principal(self, account_id: str, *, key_id: str, source: identity.Source) -> Principal:
        acct = self._store.find_account(account_id)
        if acct is None or not acct.enabled:
            raise Unauthenticated(INVALID)
        if acct.kind != "main":
            main = self._store.find_account(acct.tenant)
            if main is None or not main.enabled:  # a disabled tenant disables its sub-accounts
                raise Unauthenticated(INVALID)
        return principal_of(self._store, acct, key_id=key_id, source=source)

    def login(self, name: str, password: str) -> tuple[str, int, Account]:
        """A session token for a name and password (argon2id verified in constant time either way)."""
        now = time.monotonic()
        recent = [t for t in self._failed.get(name, []) if now - t < self.FAILED_LOGIN_WINDOW_S]
        if len(recent) >= self.MAX_FAILED_LOGINS:
            raise Unauthenticated("too many failed logins for this name; try again in a few minutes")
        found = self._store.account_by_name(name)
        acct, stored = found if found else (None, None)
        ok = cred.verify_password(stored, password)
        if acct is None or not ok:
            if len(self._failed) >= self.CACHE_MAX:
                self._failed.clear()
            self._failed[name] = [*recent, now]
            raise Unauthenticated("wrong account name or password")
        self._failed.pop(name, None)
        self._principal(acct.id, key_id="", source="session")  # refuses a disabled account or tenant
        expires = now_ms() + int(self.session_ttl_s * 1000)
        return cred.session_token(self.session_key, acct.id, expires, acct.session_epoch), expires, acct


def principal_of(store: IdentityStore, acct: Account, *, key_id: str, source: identity.Source) -> Principal:
    operator_tenant = store.operator_tenant()
    return Principal(
        name=acct.name, account_id=acct.id, tenant=acct.tenant, key_id=key_id, source=source,
        is_operator=acct.tenant == operator_tenant, kind=acct.kind,
        policies=tuple(store.policies_of(acct)),
    )


class DisabledAuthenticator:
    """CAPSTAN_AUTH_DISABLED=true: everyone is ``anonymous`` with full rights (local development only)."""

    store: IdentityStore | None = None

    def authenticate(self, token: str | None) -> Principal:
        return ANONYMOUS


def bootstrap_operator(store: IdentityStore, data_dir: Path) -> None:
    """At first start (no account yet): the operator's main account, its first key and password, each
    written once into a 0600 file of the data dir (an older install's admin-token file is replaced)."""
    if store.has_accounts():
        if not (data_dir / ADMIN_TOKEN_FILE).exists():
            log.info("the operator's first key file is gone (moved away by the operator, as advised)")
        return
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = secrets.token_urlsafe(18)
    acct = store.create_account(name=OPERATOR_NAME, kind="main", password=password, is_operator=True,
                                description="the operator (created at first start)")
    _, token = store.create_key(acct.id, description="created at first start")
    replace_secret(data_dir / ADMIN_TOKEN_FILE, token.encode())
    replace_secret(data_dir / ADMIN_PASSWORD_FILE, password.encode())
    log.info("created the operator's account %r; its API key and password are in %s and %s (mode 0600)",
             OPERATOR_NAME, ADMIN_TOKEN_FILE, ADMIN_PASSWORD_FILE)


def ensure_session_key(data_dir: Path) -> bytes:
    path = data_dir / SESSION_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret(path, secrets.token_bytes(32))
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
    key = path.read_bytes()
    if len(key) < 32:
        raise RuntimeError(f"{path} holds fewer than 32 bytes: delete it and restart (sessions end)")
    return key


def build_authenticator(settings: GatewaySettings) -> Authenticator:
    if settings.auth_disabled:
        log.warning(
            "!!! AUTHENTICATION IS DISABLED (CAPSTAN_AUTH_DISABLED=true): every request acts as 'anonymous' "
            "with full rights. Never run like this outside local development. !!!"
        )
        return DisabledAuthenticator()
    # with NATS, every identity change is also an event of the log (written to the store's outbox)
    store = IdentityStore.open(settings.data_dir, settings.identity_database_url, record_events=bool(settings.nats_url))
    bootstrap_operator(store, settings.data_dir)
    return AccountAuthenticator(store, ensure_session_key(settings.data_dir), settings.session_ttl_s)


_bearer = HTTPBearer(
    auto_error=False,
    description=f"An API key (`ck.<id>.<secret>`; the operator's first is the `{ADMIN_TOKEN_FILE}` file in the "
    "gateway's data dir) or a session token from POST /api/v1/login",
)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.authenticate(credentials.credentials if credentials else None)
    # Every gRPC call this request makes says whom it acts for (believed only from the gateway).
    identity.set_acting_principal(principal.wire())
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
