"""Events of the model aggregate (owner: registry service). Subject ``capstan.evt.model.<model-id>``.

A model has versions; each version's files are kept in storage by content hash (``files``: path ->
sha256 and size), with what the model says about itself (``metadata``) and where it came from
(``lineage``). Online services (later) use a version as a model source.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..events import Event, event

AGGREGATE = "model"
MAX_FILES = 10_000  # per version: what one commit can list within the log's commit limit


class ModelFileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    sha256: str
    size: int


class ModelMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    framework: str = ""
    task_type: str = ""
    base_model: str = ""
    chat_template: str = ""
    parameter_count: int = 0


class Lineage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    task_id: str = ""
    instance_index: int = 0
    task_name: str = ""
    hyperparameters: dict[str, Any] = {}
    data: dict[str, str] = {}  # training data file -> sha256
    image: str = ""
    command: str = ""


@event("ModelCreated", version=1)
class ModelCreated(Event):
    model_id: str
    name: str
    description: str
    tags: dict[str, str]
    creator: str
    at_ms: int
    tenant: str = ""  # the main account that owns it (#8); "" before accounts existed


@event("ModelVersionPublished", version=1)
class ModelVersionPublished(Event):
    model_id: str
    version: int
    description: str
    files: list[ModelFileEntry]
    metadata: ModelMetadata
    lineage: Lineage
    creator: str
    idempotency_key: str = ""
    at_ms: int


@event("ModelVersionDeleted", version=1)
class ModelVersionDeleted(Event):
    model_id: str
    version: int
    by: str
    at_ms: int


@event("ModelDeleted", version=1)
class ModelDeleted(Event):
    """The model and every version it still had."""

    model_id: str
    by: str
    at_ms: int
