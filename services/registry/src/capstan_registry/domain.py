"""The model aggregate (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from capstan_core.errors import AlreadyExists, InvalidArgument
from capstan_core.events import Event, event

AGGREGATE = "model"
_NAME = re.compile(r"^[^\W_][\w.-]*$", re.UNICODE)


@event("ModelCreated", version=1)
class ModelCreated(Event):
    model_id: str
    name: str
    description: str
    tags: dict[str, str]
    creator: str
    at_ms: int


def fold(events: Sequence[Event]) -> ModelCreated | None:
    created = None
    for e in events:
        if isinstance(e, ModelCreated):
            created = e
    return created


def decide_create(
    state: ModelCreated | None, *, model_id: str, name: str, description: str, tags: dict[str, str], creator: str,
    now_ms: int,
) -> list[Event]:
    if not name or len(name) > 128 or not _NAME.match(name):
        raise InvalidArgument("name must be 1..128 letters, digits, '.', '_' or '-', starting with a letter or digit", field="name")
    if len(description) > 500:
        raise InvalidArgument("description must be at most 500 characters", field="description")
    if state is not None:
        if state.name == name:
            return []
        raise AlreadyExists(f"model {model_id} already exists")
    return [ModelCreated(model_id=model_id, name=name, description=description, tags=tags, creator=creator, at_ms=now_ms)]
