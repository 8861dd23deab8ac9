"""Read models of the inference service: its agents, service groups (the aggregate's fold), placements."""

from __future__ import annotations

import json

from sqlalchemy import Connection, select, update

from capstan_core.contracts import serving
from capstan_core.contracts.scheduling import (
    NODE,
    WORKLOAD,
    NodeJoined,
    NodeStateChanged,
    WorkloadInstancesLost,
    WorkloadPlaced,
    WorkloadRejected,
    WorkloadRequeued,
)
from capstan_core.eventstore import RecordedEvent
from capstan_core.projection import Projection
from capstan_core.streams import event_subject

from .domain import group as domain
from .tables import agents, placements, services

_SERVICE_PREFIX = event_subject(serving.AGGREGATE, "x")[:-1]


def _upsert(conn: Connection, table, key: dict, values: dict) -> None:  # type: ignore[no-untyped-def]
    where = [table.c[k] == v for k, v in key.items()]
    if conn.execute(update(table).where(*where).values(**values)).rowcount == 0:
        conn.execute(table.insert().values(**key, **values))


class InferenceProjection(Projection):
    # Service groups; the nodes (inference agents join as nodes); the placements of replicas only: the
    # workloads of training tasks (most of the log on a busy platform) are never decoded here.
    subjects = (_SERVICE_PREFIX, event_subject(NODE, "x")[:-1], event_subject(WORKLOAD, "ms-x")[:-1])

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        e = rec.event
        if rec.subject.startswith(_SERVICE_PREFIX):
            self._service(conn, rec)
        elif isinstance(e, NodeJoined) and e.agent_kind == "inference":
            _upsert(conn, agents, {"node_id": e.node_id},
                    dict(resource_group_id=e.resource_group_id, name=e.name, state="Deploying"))
        elif isinstance(e, NodeStateChanged):
            conn.execute(update(agents).where(agents.c.node_id == e.node_id).values(state=e.state))
        elif isinstance(e, WorkloadPlaced) and e.kind == "service" and e.placements:
            _upsert(conn, placements, {"replica_id": e.workload_id}, dict(node_id=e.placements[0].node_id, rejected=""))
        elif isinstance(e, WorkloadRejected) and e.workload_id.startswith("ms-"):
            _upsert(conn, placements, {"replica_id": e.workload_id}, dict(node_id="", rejected=e.reason or "refused"))
        elif isinstance(e, WorkloadInstancesLost | WorkloadRequeued) and e.workload_id.startswith("ms-"):
            conn.execute(update(placements).where(placements.c.replica_id == e.workload_id).values(node_id=""))

    def _service(self, conn: Connection, rec: RecordedEvent) -> None:
        sid = rec.aggregate_id
        row = conn.execute(select(services.c.doc).where(services.c.id == sid)).first()
        g = json.loads(row[0]) if row else None
        g = domain.apply(g, rec.event)
        if g is None:
            return
        if isinstance(rec.event, serving.ServiceReplicaRemoved):
            conn.execute(placements.delete().where(placements.c.replica_id == rec.event.replica_id))
        values = dict(name=g["name"], creator=g["creator"], tenant=g.get("tenant", ""), status=domain.status(g), created_at_ms=g["created_at_ms"],
                      seq=rec.seq, deleted=g["state"] == "Deleted", doc=json.dumps(g, separators=(",", ":")))
        _upsert(conn, services, {"id": sid}, values)
