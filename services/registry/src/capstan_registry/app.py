"""Registry application layer and its projection."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select

from capstan_core.clock import SystemClock
from capstan_core.command import execute
from capstan_core.errors import AlreadyExists, NotFound
from capstan_core.eventstore import RecordedEvent
from capstan_core.ids import new_id, stable_id
from capstan_core.paging import next_token, page_bounds
from capstan_core.projection import Projection
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .domain import AGGREGATE, ModelCreated, decide_create, fold
from .tables import models


class RegistryProjection(Projection):
    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        e = rec.event
        if isinstance(e, ModelCreated):
            conn.execute(
                models.insert().values(
                    id=e.model_id, name=e.name, description=e.description, tags=json.dumps(e.tags, sort_keys=True),
                    creator=e.creator, created_at_ms=e.at_ms,
                )
            )


class RegistryApp:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.clock = SystemClock()

    async def create(self, *, name: str, description: str, tags: dict[str, str], creator: str, idempotency_key: str) -> dict[str, Any]:
        with self.ctx.engine.connect() as conn:
            taken = conn.execute(select(models.c.id).where(models.c.name == name)).scalar()
        model_id = stable_id("model", creator, idempotency_key) if idempotency_key else new_id("model")
        if taken and taken != model_id:
            raise AlreadyExists(f"a model named {name!r} already exists ({taken})")
        now = self.clock.now_ms()
        outcome = await execute(
            self.ctx.store, event_subject(AGGREGATE, model_id), fold,
            lambda s: decide_create(s, model_id=model_id, name=name, description=description, tags=tags, creator=creator, now_ms=now),
        )
        await self.ctx.await_projection(outcome.seq)
        return self.get(model_id)

    def get(self, model_id: str) -> dict[str, Any]:
        with self.ctx.engine.connect() as conn:
            row = conn.execute(select(models).where(models.c.id == model_id)).mappings().first()
        if row is None:
            raise NotFound(f"model {model_id} does not exist")
        return {**row, "tags": json.loads(row["tags"])}

    def list(self, page_size: int, page_token: str) -> tuple[list[dict[str, Any]], str, int]:
        size, offset = page_bounds(page_size, page_token)
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(models)).scalar() or 0)
            rows = conn.execute(select(models).order_by(models.c.created_at_ms, models.c.id).limit(size).offset(offset)).mappings().all()
        return [{**r, "tags": json.loads(r["tags"])} for r in rows], next_token(offset, size, total), total
