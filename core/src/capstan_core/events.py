"""Events: frozen pydantic models with a stable type name and a version.

The stored name is explicit (never a Python path) so modules can move without
stranding old events. When an event's shape changes, bump ``version`` and
register an upcaster from the old version; stored events are upcast on read. An event of a known type at a version NEWER than this
process knows raises ``NewerEventVersion``: guessing at its shape could apply it wrongly, so the
readers set its commit aside (see ``eventstore.decode_commit``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

from .numbers import check_storable

# model_validate context of an event read back from the log: stored facts are not checked again.
_STORED = {"stored": True}


class Event(BaseModel):
    """Building one refuses what no store can hold (NaN, Infinity, integers beyond 64 bits, NUL in
    text), anywhere in it, with ``InvalidArgument`` naming the field: no code path can append one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    @model_validator(mode="after")
    def _storable(self, info: ValidationInfo) -> Event:
        if info.context is not _STORED:
            check_storable(self, "")
        return self


class NewerEventVersion(ValueError):
    """A known event type written at a version this process does not know yet (a newer service wrote it)."""


class UnknownEvent(Event):
    """An event whose type this process does not know (written by a newer service): skipped, not fatal."""

    model_config = ConfigDict(frozen=True, extra="allow")
    type_name: str = ""
    type_version: int = 0


E = TypeVar("E", bound=type[Event])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_TYPES: dict[str, type[Event]] = {}
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def event(name: str, version: int = 1) -> Callable[[E], E]:
    """Class decorator: register ``cls`` under the stable ``name`` at ``version``."""

    def register(cls: E) -> E:
        existing = _TYPES.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"event type {name!r} is registered twice")
        cls.TYPE = name
        cls.VERSION = version
        _TYPES[name] = cls
        return cls

    return register


def upcaster(name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning the data of ``name`` v``from_version`` into v``from_version+1``."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(name, from_version)] = fn
        return fn

    return register


def encode(ev: Event) -> dict[str, Any]:
    if not ev.TYPE:
        raise ValueError(f"{type(ev).__name__} has no registered event type name")
    return {"type": ev.TYPE, "version": ev.VERSION, "data": ev.model_dump(mode="json")}


def decode(raw: dict[str, Any]) -> Event:
    """One stored event -> its model. Raises ``ValueError`` (pydantic's ``ValidationError`` included) for
    data that does not fit, ``NewerEventVersion`` for a version newer than the registered one."""
    name = raw["type"]
    version = raw.get("version", 1)
    data = raw.get("data", {})
    if not isinstance(name, str) or type(version) is not int or not isinstance(data, dict):
        raise ValueError("an event is {\"type\": str, \"version\": int, \"data\": {...}}")
    cls = _TYPES.get(name)
    if cls is None:
        # Our keys last, so data cannot override what the reader reports about the type.
        return UnknownEvent.model_validate({**data, "type_name": name, "type_version": version}, context=_STORED)
    if version > cls.VERSION:
        raise NewerEventVersion(
            f"{name} v{version} is newer than this service reads (v{cls.VERSION}); upgrade the service to apply it"
        )
    while version < cls.VERSION:
        step = _UPCASTERS.get((name, version))
        if step is None:
            raise ValueError(f"no upcaster for event {name} v{version} -> v{version + 1}")
        data = step(data)
        version += 1
    # A newer writer may have added optional fields (the compatible way to grow an event): an older
    # reader drops what it does not know instead of refusing the whole event.
    return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields}, context=_STORED)


def registered_types() -> dict[str, type[Event]]:
    return dict(_TYPES)
