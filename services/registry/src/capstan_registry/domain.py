"""The model aggregate (pure): decide from the folded state, return events."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from capstan_core.contracts.registry import (
    AGGREGATE,
    MAX_FILES,
    Lineage,
    ModelCreated,
    ModelDeleted,
    ModelFileEntry,
    ModelMetadata,
    ModelVersionDeleted,
    ModelVersionPublished,
)
from capstan_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from capstan_core.events import Event

__all__ = ["AGGREGATE", "ModelCreated", "ModelState", "decide_create", "decide_delete", "decide_delete_version",
           "decide_publish", "fold"]

_NAME = re.compile(r"^[^\W_][\w.-]*$", re.UNICODE)
MAX_NAME = 128
MAX_DESCRIPTION = 500


@dataclass
class ModelState:
    created: ModelCreated
    deleted: bool = False
    versions: dict[int, ModelVersionPublished] = field(default_factory=dict)
    last_version: int = 0  # numbers are never reused, even after a delete


def fold(events: Sequence[Event]) -> ModelState | None:
    state: ModelState | None = None
    for e in events:
        if isinstance(e, ModelCreated):
            state = ModelState(e)
        elif state is None:
            continue
        elif isinstance(e, ModelVersionPublished):
            state.versions[e.version] = e
            state.last_version = max(state.last_version, e.version)
        elif isinstance(e, ModelVersionDeleted):
            state.versions.pop(e.version, None)
        elif isinstance(e, ModelDeleted):
            state.deleted = True
            state.versions.clear()
    return state


def validate_name(name: str) -> None:
    if not name or len(name) > MAX_NAME or not _NAME.match(name):
        raise InvalidArgument(
            f"name must be 1..{MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit", field="name")


def validate_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description must be at most {MAX_DESCRIPTION} characters", field="description")


def decide_create(
    state: ModelState | None, *, model_id: str, name: str, description: str, tags: dict[str, str], creator: str,
    tenant: str = "",
    now_ms: int,
) -> list[Event]:
    validate_name(name)
    validate_description(description)
    if state is not None:
        if state.created.name == name and not state.deleted:
            return []
        raise AlreadyExists(f"model {model_id} already exists")
    return [ModelCreated(model_id=model_id, name=name, description=description, tags=tags, creator=creator, at_ms=now_ms,
                         tenant=tenant)]


def _live(state: ModelState | None, model_id: str) -> ModelState:
    if state is None or state.deleted:
        raise NotFound(f"model {model_id} does not exist")
    return state


def decide_publish(
    state: ModelState | None, *, model_id: str, description: str, files: list[ModelFileEntry], metadata: ModelMetadata,
    lineage: Lineage, creator: str, idempotency_key: str, now_ms: int,
) -> list[Event]:
    s = _live(state, model_id)
    validate_description(description)
    if idempotency_key and any(v.idempotency_key == idempotency_key for v in s.versions.values()):
        return []  # a retry of a publish that landed
    if not files:
        raise FailedPrecondition("there are no files to publish")
    if len(files) > MAX_FILES:
        raise FailedPrecondition(f"a version holds at most {MAX_FILES} files ({len(files)} given)")
    return [ModelVersionPublished(
        model_id=model_id, version=s.last_version + 1, description=description, files=files, metadata=metadata,
        lineage=lineage, creator=creator, idempotency_key=idempotency_key, at_ms=now_ms,
    )]


def decide_delete_version(state: ModelState | None, *, model_id: str, version: int, by: str, now_ms: int) -> list[Event]:
    s = _live(state, model_id)
    if version not in s.versions:
        raise NotFound(f"model {model_id} has no version {version}")
    return [ModelVersionDeleted(model_id=model_id, version=version, by=by, at_ms=now_ms)]


def decide_delete(state: ModelState | None, *, model_id: str, by: str, now_ms: int) -> list[Event]:
    _live(state, model_id)
    return [ModelDeleted(model_id=model_id, by=by, at_ms=now_ms)]
