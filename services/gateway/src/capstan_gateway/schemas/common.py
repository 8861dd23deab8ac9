"""Shared API shapes: limits, timestamps, pages, and the request base model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from capstan_core import regions
from capstan_core.errors import InvalidArgument
from capstan_core.numbers import MAX_TIME_MS

T = TypeVar("T")

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
# Edge limits on size only; what a valid name or tag is, the owning service decides.
MAX_TAGS = 100
MAX_JSON_OBJECT_BYTES = 64 * 1024

TagKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TagValue = Annotated[str, StringConstraints(max_length=256)]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS, description="key=value pairs")]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _this_region(value: str) -> str:
    try:
        return regions.check(value, regions.install_region())
    except InvalidArgument as e:
        raise ValueError(e.message) from None


# A form's region (SPEC §0): empty, or this install's (CAPSTAN_REGION); another is refused.
FormRegion = Annotated[str, StringConstraints(max_length=64), AfterValidator(_this_region),
                       Field(description="this install's region (CAPSTAN_REGION, default \"default\"); empty: it")]


def region_field() -> Any:
    """A view's region: every object of an install lives in the install's region."""
    return Field(default_factory=regions.install_region, description="the region it lives in (this install's)")


class RequestModel(BaseModel):
    """Request bodies reject unknown fields (a typo must not be silently ignored) and values of the
    wrong JSON type: ``false`` is not the number 0, ``"3"`` not the number 3 (strict mode)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last page")
    total: int


def from_ms(ms: int) -> datetime | None:
    """Epoch milliseconds -> aware UTC datetime; 0 (unset in proto3) -> None."""
    if not ms:
        return None
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)


def from_ms_required(ms: int) -> datetime:
    return from_ms(ms) or datetime.fromtimestamp(0, UTC)


def parse_time(value: str, field: str) -> int:
    """A query time given as ISO-8601 (naive means UTC) or epoch milliseconds -> epoch ms."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        ms = int(text)
    else:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(
                f"{field}: expected an ISO-8601 time (2024-05-01T12:00:00Z) or epoch milliseconds, got {text[:40]!r}"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = int(dt.timestamp() * 1000)
    if not 0 <= ms <= MAX_TIME_MS:
        raise InvalidArgument(f"{field}: must be from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z")
    return ms


def dump_json_object(value: dict[str, Any] | None, field: str) -> str:
    """An API object -> the ``*_json`` string a proto carries ("" for None), size-limited."""
    if value is None:
        return ""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_JSON_OBJECT_BYTES:
        raise InvalidArgument(f"{field}: at most {MAX_JSON_OBJECT_BYTES // 1024} KiB of JSON")
    return text


def load_json_object(text: str) -> dict[str, Any]:
    """A proto ``*_json`` string -> an object; "" (the default) -> {}."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}
