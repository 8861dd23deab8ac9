"""The registry's read models: models and their live versions."""

from __future__ import annotations

import json

from sqlalchemy import Connection

from capstan_core.contracts.registry import (
    AGGREGATE,
    ModelCreated,
    ModelDeleted,
    ModelVersionDeleted,
    ModelVersionPublished,
)
from capstan_core.eventstore import RecordedEvent
from capstan_core.projection import Projection
from capstan_core.streams import event_subject

from .tables import model_versions, models


class RegistryProjection(Projection):
    subjects = (event_subject(AGGREGATE, "x")[:-1],)  # models only

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        e = rec.event
        if isinstance(e, ModelCreated):
            conn.execute(models.insert().values(
                id=e.model_id, name=e.name, description=e.description, tags=json.dumps(e.tags, sort_keys=True),
                creator=e.creator, created_at_ms=e.at_ms, tenant=e.tenant,
            ))
        elif isinstance(e, ModelVersionPublished):
            conn.execute(model_versions.insert().values(
                model_id=e.model_id, version=e.version, description=e.description,
                metadata=e.metadata.model_dump_json(), lineage=e.lineage.model_dump_json(),
                files=json.dumps([f.model_dump() for f in e.files]), size_bytes=sum(f.size for f in e.files),
                creator=e.creator, created_at_ms=e.at_ms,
            ))
        elif isinstance(e, ModelVersionDeleted):
            conn.execute(model_versions.delete().where(
                (model_versions.c.model_id == e.model_id) & (model_versions.c.version == e.version)))
        elif isinstance(e, ModelDeleted):
            conn.execute(model_versions.delete().where(model_versions.c.model_id == e.model_id))
            conn.execute(models.delete().where(models.c.id == e.model_id))
