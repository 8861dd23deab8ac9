"""Inference service: in the backbone it knows its agents (nodes of kind ``inference``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from capstan_core.contracts.scheduling import NodeJoined, NodeStateChanged
from capstan_core.eventstore import RecordedEvent
from capstan_core.projection import Projection
from capstan_core.service import ServiceContext

from .tables import agents


class InferenceProjection(Projection):
    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        e = rec.event
        if isinstance(e, NodeJoined) and e.agent_kind == "inference":
            values = dict(resource_group_id=e.resource_group_id, name=e.name, state="Deploying")
            if conn.execute(update(agents).where(agents.c.node_id == e.node_id).values(**values)).rowcount == 0:
                conn.execute(agents.insert().values(node_id=e.node_id, **values))
        elif isinstance(e, NodeStateChanged):
            conn.execute(update(agents).where(agents.c.node_id == e.node_id).values(state=e.state))


class InferenceApp:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def list_agents(self) -> list[dict[str, Any]]:
        with self.ctx.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(agents).order_by(agents.c.name)).mappings()]
