"""Who is calling: bearer tokens -> a ``Principal``.

Today there is one account, ``admin``, whose token the gateway generates at first
start into ``<data_dir>/admin-token`` (mode 0600). The gateway keeps only the
token's SHA-256. Sub-accounts and policies (SPEC §1) will come as other
``Authenticator`` implementations and ``Principal.policies``; routes only see a
``Principal``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from capstan_core.errors import Unauthenticated
from capstan_core.identity import set_acting_principal

from .settings import GatewaySettings

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class Principal:
    name: str
    is_admin: bool = False
    # Names of attached policies (FullAccess, ReadOnlyAccess, ...); unused until accounts exist.
    policies: tuple[str, ...] = ()


ADMIN = Principal(name="admin", is_admin=True, policies=("FullAccess",))
ANONYMOUS = Principal(name="anonymous", is_admin=True, policies=("FullAccess",))


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Principal:
        """The principal holding ``token``; raises ``Unauthenticated`` otherwise."""
        ...


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFileAuthenticator:
    """One admin token, kept in a 0600 file; only its SHA-256 stays in memory."""

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file
        self._admin_digest = _digest(ensure_token_file(token_file))

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            # Never the file's path: it would tell any caller where the host keeps its data.
            raise Unauthenticated(
                "missing credentials: send 'Authorization: Bearer <token>'; the admin token is in the "
                f"data dir's `{ADMIN_TOKEN_FILE}` file on the gateway host"
            )
        if hmac.compare_digest(_digest(token), self._admin_digest):
            return ADMIN
        raise Unauthenticated("the bearer token is not valid; check the token you sent (it is never shown back)")


class DisabledAuthenticator:
    """CAPSTAN_AUTH_DISABLED=true: everyone is ``anonymous`` with full rights (local development only)."""

    def authenticate(self, token: str | None) -> Principal:
        return ANONYMOUS


def ensure_token_file(path: Path) -> str:
    """Read the admin token, generating it (0600, created atomically) at first start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token_file(path)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    log.info("generated the admin token into %s (mode 0600)", path)
    return token


def _read_token_file(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Like ssh with a private key: a token others can read is not a secret any more.
        log.warning("%s had mode %o; tightening it to 0600", path, mode)
        os.chmod(path, 0o600)
    token = path.read_text().strip()
    if not token:
        raise RuntimeError(f"{path} is empty: delete it and restart the gateway to generate a new admin token")
    return token


def build_authenticator(settings: GatewaySettings) -> Authenticator:
    if settings.auth_disabled:
        log.warning(
            "!!! AUTHENTICATION IS DISABLED (CAPSTAN_AUTH_DISABLED=true): every request acts as 'anonymous' "
            "with full rights. Never run like this outside local development. !!!"
        )
        return DisabledAuthenticator()
    return TokenFileAuthenticator(settings.data_dir / ADMIN_TOKEN_FILE)


_bearer = HTTPBearer(auto_error=False, description=f"The admin token: the `{ADMIN_TOKEN_FILE}` file in the gateway's data dir")


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.authenticate(credentials.credentials if credentials else None)
    # Every gRPC call this request makes says whom it acts for (believed only from the gateway).
    set_acting_principal(principal.name)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
