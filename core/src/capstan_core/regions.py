"""Regions (SPEC §0: "every object lives in one region; lists are per region; a single self-hosted
install may have one region by default"). One Capstan install is one region, named by the operator
(``CAPSTAN_REGION``, default ``default``): every object of the install lives in it. A form may name the
region (as the reference product's forms do); another region is refused with a clear message, since
another region is another install. Views show the region of what they describe."""

from __future__ import annotations

import os
import re

from .errors import InvalidArgument

ENV = "CAPSTAN_REGION"
DEFAULT = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def install_region() -> str:
    """This install's region; ``CAPSTAN_REGION`` must be 1..63 lowercase letters, digits or '-'."""
    name = os.environ.get(ENV, "").strip() or DEFAULT
    if not _NAME.match(name):
        raise ValueError(f"{ENV} must be 1..63 lowercase letters, digits or '-' (e.g. ap-guangzhou): {name!r}")
    return name


def check(value: object, here: str, field: str = "region") -> str:
    """The region a form names ("" or absent: ``here``, this install's), refused unless it is ``here``."""
    if value is None or value == "":
        return here
    if not isinstance(value, str) or value != here:
        shown = value if isinstance(value, str) else type(value).__name__
        raise InvalidArgument(f"region {str(shown)[:64]!r} is not served by this install: its region is {here!r} "
                              "(each region is a Capstan install of its own)", field=field)
    return here
