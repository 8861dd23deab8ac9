"""Identifiers in the reference product's shapes: ``rsg-xxxxxxxx``, ``train-xxxxxxxx``, ..."""

from __future__ import annotations

import hashlib
import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 8) -> str:
    return prefix + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def stable_id(prefix: str, *parts: str, length: int = 8) -> str:
    """An id derived from a key: a retried create with the same idempotency key maps to the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    n = int.from_bytes(digest[:16], "big")
    chars = []
    for _ in range(length):
        n, r = divmod(n, len(_ALPHABET))
        chars.append(_ALPHABET[r])
    return prefix + "-" + "".join(chars)
