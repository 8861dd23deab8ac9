"""What the platform can store: finite numbers, 64-bit integers, valid text without NUL.

SQLite and PostgreSQL hold signed 64-bit integers; JSON and the event log hold finite numbers
only (Python's ``json`` turns ``NaN``, ``Infinity`` and ``1e400`` into floats no store keeps);
PostgreSQL text holds no NUL character. One definition, used by the ``Event`` base (nothing
unstorable is ever appended), by the domain checks of JSON a command carries, and by the
gateway's body parsing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgument

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# Epoch milliseconds of 9999-12-31T23:59:59.999Z: the last instant a datetime can show.
MAX_TIME_MS = 253_402_300_799_999

NOT_FINITE = "must be a finite number (NaN, Infinity and numbers beyond ±1.8e308 are refused)"
NOT_INT64 = "integers must fit in 64 bits (-2^63 .. 2^63-1)"
HAS_NUL = "text must not contain the NUL character (\\u0000)"
NOT_UTF8 = "text must be valid Unicode (a lone surrogate such as \\ud800 is refused)"
# JSON nesting the platform handles (serialisers recurse): far more than any real document needs.
MAX_DEPTH = 32
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first value under ``value`` no store can hold, as (dotted path, reason); None if all can be.

    Walks dicts (keys and values), lists, tuples and pydantic models, without recursion."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return where, NOT_FINITE
        elif isinstance(v, int):  # bool too: always in range
            if not INT64_MIN <= v <= INT64_MAX:
                return where, NOT_INT64
        elif isinstance(v, str):
            if "\x00" in v:
                return where, HAS_NUL
            if not v.isascii() and not _utf8(v):
                return where, NOT_UTF8
        elif v is None:
            continue
        elif depth >= MAX_DEPTH:
            return where, TOO_DEEP
        elif isinstance(v, Mapping):
            for k, item in reversed(list(v.items())):
                if isinstance(k, str) and ("\x00" in k or not _utf8(k)):
                    return where or "(key)", HAS_NUL if "\x00" in k else NOT_UTF8
                stack.append((item, f"{where}.{k}" if where else str(k), depth + 1))
        elif isinstance(v, list | tuple):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in reversed(list(enumerate(v))))
        else:
            fields = getattr(type(v), "__pydantic_fields__", None)
            if fields is not None:
                stack.extend(
                    (getattr(v, name), f"{where}.{name}" if where else name, depth + 1) for name in reversed(list(fields))
                )
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_storable(value: Any, field: str) -> None:
    """Raise ``InvalidArgument`` naming the first value under ``field`` that no store can hold."""
    found = unstorable(value, field)
    if found:
        where, reason = found
        raise InvalidArgument(f"{where}: {reason}", field=where)
