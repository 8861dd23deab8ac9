"""Offset pagination with opaque page tokens, the same for every list a service answers."""

from __future__ import annotations

import base64

from .errors import InvalidArgument
from .numbers import INT64_MAX

MAX_PAGE = 500
DEFAULT_PAGE = 50


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(size, offset) from a request's page size (0 = default) and token ("" = first page)."""
    size = page_size or DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise InvalidArgument(f"page_size must be 1..{MAX_PAGE}", field="page_size")
    offset = 0
    if page_token:
        try:
            offset = int(base64.urlsafe_b64decode(page_token.encode()).decode())
        except (ValueError, UnicodeDecodeError) as e:  # binascii.Error is a ValueError
            raise InvalidArgument("page_token is not one this service issued", field="page_token") from e
        if not 0 <= offset <= INT64_MAX:  # an offset the SQL stores can take
            raise InvalidArgument("page_token is not one this service issued", field="page_token")
    return size, offset


def next_token(offset: int, size: int, total: int) -> str:
    """The token of the page after ``offset``, or "" when that was the last page."""
    nxt = offset + size
    return base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < total else ""


# -- keyset pages: "after this sort key", for lists that must stay fast however deep a page is -------------
_KEYSET = "k"


def keyset_bounds(page_size: int, page_token: str) -> tuple[int, int | None, int]:
    """(size, after, offset) from a request: ``after`` is the sort key the page continues after (None: the
    first page, or an offset token issued before keyset pages, answered at its ``offset``)."""
    if page_token:
        try:
            text = base64.urlsafe_b64decode(page_token.encode()).decode()
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument("page_token is not one this service issued", field="page_token") from e
        if text.startswith(_KEYSET):
            size, _ = page_bounds(page_size, "")
            try:
                after = int(text[len(_KEYSET):])
            except ValueError as e:
                raise InvalidArgument("page_token is not one this service issued", field="page_token") from e
            if not 0 <= after <= INT64_MAX:
                raise InvalidArgument("page_token is not one this service issued", field="page_token")
            return size, after, 0
    size, offset = page_bounds(page_size, page_token)
    return size, None, offset


def keyset_token(after: int) -> str:
    """The token of the page that continues after sort key ``after``."""
    return base64.urlsafe_b64encode(f"{_KEYSET}{after}".encode()).decode()
