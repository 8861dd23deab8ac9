"""Secrets of accounts: passwords (argon2id), API keys (id + secret, only the secret's SHA-256 kept)
and session tokens (HMAC-SHA256 signed, expiring). Every comparison is constant-time.

Token shapes (what ``Authorization: Bearer`` carries):
- API key: ``ck.<key id>.<secret>`` (the secret: 256 random bits, shown once);
- session: ``cs.<payload>.<signature>``, payload = base64url JSON ``{"a": account, "e": expiry ms, "n": epoch}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

KEY_PREFIX = "ck"
SESSION_PREFIX = "cs"
MAX_TOKEN_LEN = 1024
# argon2id, memory-hard: 64 MiB, 3 passes (RFC 9106's second recommended option).
_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1)
# A hash to verify against when the account does not exist: the time taken does not tell.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_secret() -> str:
    return secrets.token_urlsafe(32)


def key_token(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}.{key_id}.{secret}"


def digest_matches(stored_hex: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hex.encode(), secret_digest(secret).encode())


@dataclass(frozen=True)
class ParsedToken:
    kind: str  # "key" | "session"
    key_id: str = ""
    secret: str = ""
    account: str = ""
    expires_ms: int = 0
    epoch: int = 0


def parse_token(token: str, session_key: bytes) -> ParsedToken | None:
    """The token's parts, a session's signature checked; ``None`` for anything malformed or forged."""
    if not token or len(token) > MAX_TOKEN_LEN or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    prefix, a, b = parts
    if prefix == KEY_PREFIX and a and b:
        return ParsedToken("key", key_id=a, secret=b)
    if prefix == SESSION_PREFIX:
        expected = _sign(session_key, a)
        if not hmac.compare_digest(expected.encode(), b.encode()):
            return None
        try:
            d = json.loads(base64.urlsafe_b64decode(a + "=" * (-len(a) % 4)))
            return ParsedToken("session", account=str(d["a"]), expires_ms=int(d["e"]), epoch=int(d["n"]))
        except (ValueError, KeyError, TypeError):
            return None
    return None


def session_token(session_key: bytes, account: str, expires_ms: int, epoch: int) -> str:
    payload = json.dumps({"a": account, "e": expires_ms, "n": epoch, "r": secrets.token_hex(8)}, separators=(",", ":"))
    a = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return f"{SESSION_PREFIX}.{a}.{_sign(session_key, a)}"


def _sign(key: bytes, payload: str) -> str:
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")
