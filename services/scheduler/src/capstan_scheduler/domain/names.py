"""SPEC §0 name rules, shared by the resources the scheduler owns."""

from __future__ import annotations

import re

from capstan_core.errors import InvalidArgument

# Letters (CJK included), digits, '_' and '-'; starts with a letter or a digit.
_NAME = re.compile(r"^[^\W_][\w-]*$", re.UNICODE)


def check_name(name: str, *, field: str, max_len: int) -> None:
    if not name:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(name) > max_len:
        raise InvalidArgument(f"{field} must be at most {max_len} characters (got {len(name)})", field=field)
    if not _NAME.match(name):
        raise InvalidArgument(
            f"{field} {name!r} may contain only letters, digits, '_' and '-', and must start with a letter or a digit",
            field=field,
        )


def check_tags(tags: dict[str, str], *, field: str = "tags") -> None:
    for k, v in tags.items():
        if not k or len(k) > 128 or len(v) > 256:
            raise InvalidArgument(f"{field}: keys must be 1..128 characters and values at most 256", field=field)
