"""The inference service's application layer: online-service commands, queries and the control loop.

Every command is load -> decide (``domain/group.py``) -> append -> wait for the read model; the control
loop (``reconcile``) asks the same aggregate what it needs now (rollout, drain, restarts, auto-stop,
autoscaling) and appends that. Replica load for autoscaling is not in the event log: the gateways'
figures come from the JetStream KV bucket ``capstan_serving_load``, CPU/memory samples from the agents'
reports are kept in memory (``loads.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from sqlalchemy import ColumnElement, func, select

from capstan_core import grpcutil, regions
from capstan_core.clock import Clock, SystemClock
from capstan_core.command import execute
from capstan_core.contracts.serving import AGGREGATE
from capstan_core.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from capstan_core.events import Event
from capstan_core.identity import Caller, current_caller
from capstan_core.ids import new_id, stable_id
from capstan_core.logs import read_logs
from capstan_core.loops import LoopGuard, Step
from capstan_core.paging import next_token, page_bounds
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject
from capstan_proto import registry_pb2, registry_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

from .domain import autoscale
from .domain import group as domain
from .domain import spec as specs
from .history import describe
from .loads import LoadBoard
from .replica_spec import replica_spec
from .tables import agents, placements, services

DEFAULT_DRAIN_S = 2.0  # gateways poll ListRoutes about every 0.5 s: a retired replica is out of all of them by then
EVENTS_WINDOW_MS = 24 * 3600 * 1000
KEY_PREFIX = "sk-"


def drain_delay_ms() -> int:
    return int(float(os.environ.get("CAPSTAN_SERVING_DRAIN_S", DEFAULT_DRAIN_S)) * 1000)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class InferenceApp:
    def __init__(self, ctx: ServiceContext, clock: Clock | None = None) -> None:
        self.ctx = ctx
        self.clock = clock or SystemClock()
        self.drain_delay_ms = drain_delay_ms()
        self.loads = LoadBoard(ctx.js, self.clock)
        self._guard = LoopGuard("inference.services", ctx.counters)
        self.region = regions.install_region()

    def steps(self) -> list[Step]:
        return [(self._guard.name, self.reconcile)]

    @staticmethod
    def _subject(service_id: str) -> str:
        return event_subject(AGGREGATE, service_id)

    async def _run(self, service_id: str, decide: Callable[[domain.Group | None], Sequence[Event]],
                   msg_id: str | None = None) -> None:
        outcome = await execute(self.ctx.store, self._subject(service_id), domain.fold,
                                lambda g: decide(_visible(g)), msg_id=msg_id)
        if outcome.seq:
            await self.ctx.await_projection(outcome.seq)
            await self.converge(service_id)

    async def _change(self, sid: str, decide: Callable[..., Sequence[Event]], *args: Any,
                      include_deleted: bool = False) -> dict[str, Any]:
        """Run ``decide(group, sid, *args, now_ms)`` as a command; the group as it is then."""
        now = self.clock.now_ms()
        await self._run(sid, lambda g: decide(g, sid, *args, now))
        return await asyncio.to_thread(self.get, sid, include_deleted)

    async def _version(self, sid: str, vid: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The group's view and its version ``vid`` (NotFound naming both)."""
        g = await asyncio.to_thread(self.get, sid)
        v = next((x for x in g["versions"] if x["id"] == vid), None)
        if v is None:
            raise NotFound(f"service {sid} has no version {vid}")
        return g, v

    # -- checks against other services (before anything is appended) ------------------------------------

    async def _check_group(self, rg_id: str) -> None:
        if not self.ctx.settings.scheduler_addr:
            raise Unavailable("the inference service is not configured with the scheduler's address")
        stub = scheduler_pb2_grpc.SchedulerStub(self.ctx.channel(self.ctx.settings.scheduler_addr, "scheduler"))
        try:
            g = await stub.GetResourceGroup(scheduler_pb2.GetResourceGroupRequest(id=rg_id), timeout=5)
        except grpc.aio.AioRpcError as e:
            err = grpcutil.to_domain_error(e, service="scheduler")
            if isinstance(err, NotFound):
                raise InvalidArgument(f"resource group {rg_id} does not exist", field="resource_group_id") from e
            raise err from e
        tenant = current_caller().tenant  # a user deploys into its tenant's groups and those shared with it
        if tenant and g.tenant != tenant and tenant not in g.shared_with:
            raise InvalidArgument(f"resource group {rg_id} does not exist", field="resource_group_id")

    async def _resolve_model(self, spec: dict[str, Any], owner: str = "") -> dict[str, Any]:
        """A registry model version becomes its path on the platform storage (the registry materialises it).
        The registry is asked for the calling user's tenant: its models only; a name means the owning tenant's
        (``owner``: the service's, else the caller's own)."""
        m = spec["model"]
        if m["kind"] != "registry":
            return spec
        if not self.ctx.settings.registry_addr:
            raise Unavailable("the inference service is not configured with the registry's address")
        stub = registry_pb2_grpc.RegistryStub(self.ctx.channel(self.ctx.settings.registry_addr, "registry"))
        try:
            src = await stub.ResolveModelSource(
                registry_pb2.ResolveModelSourceRequest(
                    model_id=m["model_id"], version=m["version"], tenant=current_caller().tenant,
                    prefer_tenant=owner or current_caller().owner_tenant),
                timeout=30)
        except grpc.aio.AioRpcError as e:
            err = grpcutil.to_domain_error(e, service="registry")
            if isinstance(err, NotFound | InvalidArgument):
                raise InvalidArgument(f"model {m['model_id']} version {m['version'] or 'latest'}: {err.message}",
                                      field="model") from e
            raise err from e
        # pinned to the model's id: a name given here keeps meaning this model on a later rebuild
        return {**spec, "model": {**m, "model_id": src.model_id or m["model_id"], "version": src.version,
                                  "path": src.path}}

    async def _spec(self, raw: Any, deployment_mode: str, owner: str = "") -> dict[str, Any]:
        spec = specs.normalize(raw, deployment_mode=deployment_mode, region=self.region)
        await self._check_group(spec["resource_group_id"])
        return await self._resolve_model(spec, owner)

    # -- commands ------------------------------------------------------------------------------------

    async def create(self, *, name: str, description: str, tags: dict[str, str], deployment_mode: str,
                     auth_enabled: bool, auto_stop_at_ms: int, spec_raw: Any, generate_key: bool, creator: str,
                     idempotency_key: str) -> dict[str, Any]:
        specs.check_name(name)
        specs.check_description(description)
        tags = specs.check_tags(tags)
        mode = deployment_mode or "standard"
        if mode not in domain.DEPLOYMENT_MODES:
            raise InvalidArgument("deployment_mode must be standard or multi-instance", field="deployment_mode")
        spec = await self._spec(spec_raw, mode)
        sid = stable_id("ms", creator, idempotency_key) if idempotency_key else new_id("ms")
        now = self.clock.now_ms()
        decide = functools.partial(
            domain.decide_create, service_id=sid, name=name, description=description, tags=tags,
            deployment_mode=mode, auth_enabled=auth_enabled or generate_key, auto_stop_at_ms=auto_stop_at_ms,
            spec=spec, creator=creator, now_ms=now, tenant=current_caller().owner_tenant)
        await self._run(sid, decide, msg_id=f"create:{sid}")
        view = await asyncio.to_thread(self.get, sid)
        if generate_key and not view["keys"]:
            key = await self.create_key(sid, remark="generated at creation", tokens_per_minute=0, tokens_per_day=0,
                                        by=creator)
            view = await asyncio.to_thread(self.get, sid)
            view["created_key"] = key
        return view

    async def update(self, sid: str, changes: dict[str, Any], by: str) -> dict[str, Any]:
        """Group fields (description, tags, auth on/off, the QPS cap, auto-stop)."""
        allowed = {"description", "tags", "auth_enabled", "group_qps_limit", "auto_stop_at_ms"}
        if unknown := sorted(set(changes) - allowed):
            raise InvalidArgument(f"a service has no field {unknown[0]!r} to update (known: {', '.join(sorted(allowed))})",
                                  field=unknown[0])
        if "description" in changes:
            specs.check_description(changes["description"])
        if "tags" in changes:
            changes["tags"] = specs.check_tags(changes["tags"])
        if "auth_enabled" in changes and not isinstance(changes["auth_enabled"], bool):
            raise InvalidArgument("auth_enabled must be true or false", field="auth_enabled")
        for f, hi in (("group_qps_limit", specs.GROUP_QPS_CAP), ("auto_stop_at_ms", 2**62)):
            if f in changes:
                v = changes[f]
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                    raise InvalidArgument(f"{f} must be a whole number 0..{hi}", field=f)
        if changes.get("group_qps_limit") == 0:
            raise InvalidArgument(f"group_qps_limit must be 1..{specs.GROUP_QPS_CAP}", field="group_qps_limit")
        return await self._change(sid, domain.decide_update_group, changes, by)

    async def add_version(self, sid: str, spec_raw: Any, weight: int, by: str) -> dict[str, Any]:
        g = await asyncio.to_thread(self.get, sid)
        spec = await self._spec(spec_raw, g["deployment_mode"], g.get("tenant", ""))
        return await self._change(sid, domain.decide_add_version, spec, weight, by)

    async def update_version(self, sid: str, vid: str, changes: Any, by: str) -> dict[str, Any]:
        """A rolling update: ``changes`` (fields of the version's form) over its current spec."""
        g, v = await self._version(sid, vid)
        if not isinstance(changes, dict):
            raise InvalidArgument("spec must be an object with the fields to change", field="spec")
        base = {k: val for k, val in v["spec"].items()}
        if "model" in changes:
            base.pop("model")
        spec = await self._spec({**base, **changes}, g["deployment_mode"], g.get("tenant", ""))
        return await self._change(sid, domain.decide_update_version, vid, spec, by)

    async def delete_version(self, sid: str, vid: str, by: str) -> dict[str, Any]:
        return await self._change(sid, domain.decide_delete_version, vid, by)

    async def scale(self, sid: str, vid: str, replicas: int, by: str) -> dict[str, Any]:
        vid = vid or await self._only_version(sid)
        return await self._change(sid, domain.decide_scale, vid, replicas, by)

    async def set_autoscaling(self, sid: str, vid: str, raw: Any, by: str) -> dict[str, Any]:
        vid = vid or await self._only_version(sid)
        _, v = await self._version(sid, vid)
        cfg = autoscale.normalize(raw, rate_limit_kind=v["spec"]["rate_limit"]["kind"], gpu=v["spec"]["resources"]["gpu"])
        return await self._change(sid, domain.decide_autoscaling, vid, cfg, by)

    async def set_weights(self, sid: str, weights: dict[str, int], by: str) -> dict[str, Any]:
        if not weights:
            raise InvalidArgument("weights must name at least one version", field="weights")
        return await self._change(sid, domain.decide_weights, weights, by)

    async def set_state(self, sid: str, state: str, by: str) -> dict[str, Any]:
        return await self._change(sid, domain.decide_state, state, by, include_deleted=True)

    async def isolate(self, sid: str, rid: str, isolated: bool, by: str) -> dict[str, Any]:
        return await self._change(sid, domain.decide_isolate, rid, isolated, by)

    async def rebuild(self, sid: str, rid: str, by: str) -> dict[str, Any]:
        return await self._change(sid, domain.decide_rebuild, rid, by)

    async def create_key(self, sid: str, *, remark: str, tokens_per_minute: int, tokens_per_day: int,
                         by: str) -> dict[str, Any]:
        """A new key; the secret is in this answer only (the log and the read model hold its SHA-256)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        kid = new_id("key")
        now = self.clock.now_ms()
        await self._run(sid, lambda g: domain.decide_create_key(
            g, sid, key_id=kid, secret_sha256=hash_secret(secret), remark=remark, tokens_per_minute=tokens_per_minute,
            tokens_per_day=tokens_per_day, by=by, now_ms=now))
        key = next(k for k in (await asyncio.to_thread(self.get, sid))["keys"] if k["id"] == kid)
        return {**key, "secret": secret}

    async def update_key(self, sid: str, kid: str, changes: dict[str, Any], by: str) -> dict[str, Any]:
        now = self.clock.now_ms()
        await self._run(sid, lambda g: domain.decide_update_key(g, sid, kid, changes, by, now))
        keys = (await asyncio.to_thread(self.get, sid))["keys"]
        return next(k for k in keys if k["id"] == kid)

    async def delete_key(self, sid: str, kid: str, by: str) -> None:
        now = self.clock.now_ms()
        await self._run(sid, lambda g: domain.decide_delete_key(g, sid, kid, by, now))

    async def _only_version(self, sid: str) -> str:
        g = await asyncio.to_thread(self.get, sid)
        if len(g["versions"]) != 1:
            raise InvalidArgument(f"service {sid} has {len(g['versions'])} versions: name one (version_id)",
                                  field="version_id")
        return str(g["versions"][0]["id"])

    # -- node agents -----------------------------------------------------------------------------------

    def _check_node(self, caller: Caller, rid: str) -> None:
        if caller.kind != "node":
            return
        with self.ctx.engine.connect() as conn:
            node = conn.execute(select(placements.c.node_id).where(placements.c.replica_id == rid)).scalar()
        if node != caller.node_id:
            raise PermissionDenied(f"replica {rid} is not placed on {caller.name}")

    def replica_spec(self, caller: Caller, rid: str) -> dict[str, Any]:
        g = self._group_of(rid)
        r = g["replicas"].get(rid)
        if r is None:
            raise NotFound(f"replica {rid} does not exist")
        self._check_node(caller, rid)
        with self.ctx.engine.connect() as conn:
            node = conn.execute(select(placements.c.node_id).where(placements.c.replica_id == rid)).scalar() or ""
        return replica_spec(g, r, node, str(self.ctx.settings.storage_path))

    async def report(self, caller: Caller, *, rid: str, state: str, address: str, exit_code: int, message: str,
                     generation: int, cpu: float, memory_gib: float, gpu_percent: float | None = None) -> None:
        g = await asyncio.to_thread(self._group_of, rid)
        await asyncio.to_thread(self._check_node, caller, rid)
        self.loads.sample(rid, cpu, memory_gib, gpu_percent)
        sid = g["id"]
        now = self.clock.now_ms()

        def decide(s: domain.Group | None) -> list[Event]:
            return domain.decide_report(s, sid, rid, state=state, address=address, exit_code=exit_code,
                                        message=message, generation=generation, now_ms=now)

        with contextlib.suppress(NotFound):
            if not decide(g):  # agents repeat themselves (usage samples): the read model already says so
                return
        await self._run(sid, decide)

    def _group_of(self, rid: str) -> domain.Group:
        sid = domain.service_of(rid)
        if not sid:
            raise NotFound(f"replica {rid} does not exist")
        try:
            return self._doc(sid)
        except NotFound:
            raise NotFound(f"replica {rid} does not exist") from None

    # -- the control loop -----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """The loop's pass: every live group, read in one query with every refused placement; the
        aggregate is loaded only for groups whose read-model copy says something is due."""
        docs, rejected = await asyncio.to_thread(self._live_groups)
        for sid, doc in docs.items():
            async with self._guard.aitem(sid):
                if self._decide(rejected.get(sid, {}), await self.loads.read(doc))(doc):
                    await self.converge(sid)

    async def converge(self, sid: str) -> None:
        """Append what service ``sid`` needs now (nothing when it is where it should be)."""
        rejected = (await asyncio.to_thread(self._rejected, sid)).get(sid, {})
        try:
            doc: domain.Group | None = await asyncio.to_thread(self._doc, sid)
        except NotFound:
            doc = None
        decide = self._decide(rejected, await self.loads.read(doc))
        outcome = await execute(self.ctx.store, self._subject(sid), domain.fold, decide)
        if outcome.seq:
            await self.ctx.await_projection(outcome.seq)

    def _decide(self, rejected: dict[str, str],
                loads: dict[str, dict[str, float]]) -> Callable[[domain.Group | None], list[Event]]:
        now = self.clock.now_ms()
        scaler = functools.partial(self._autoscale, loads=loads, now_ms=now)
        return functools.partial(domain.decide_reconcile, now_ms=now, drain_delay_ms=self.drain_delay_ms,
                                 rejected=rejected, autoscale=scaler)

    def _autoscale(self, g: domain.Group, v: dict[str, Any], *, loads: dict[str, dict[str, float]],
                   now_ms: int) -> int | None:
        cfg = v["autoscaling"]
        if cfg["mode"] == "time":
            return autoscale.time_replicas(cfg, now_ms)
        if cfg["mode"] != "hpa":
            return None
        values = self.loads.metric_values(g, v, cfg["metric"], loads)
        return autoscale.hpa_replicas(cfg, v["replicas"], values, last_change_ms=v["last_scaled_ms"], now_ms=now_ms)

    def _live_groups(self) -> tuple[dict[str, domain.Group], dict[str, dict[str, str]]]:
        with self.ctx.engine.connect() as conn:
            rows = conn.execute(select(services.c.id, services.c.doc).where(services.c.deleted.is_(False))
                                .order_by(services.c.id)).all()
        return {r[0]: json.loads(r[1]) for r in rows}, self._rejected()

    def _rejected(self, sid: str = "") -> dict[str, dict[str, str]]:
        """Replicas the scheduler refused, by service (of ``sid`` only, when given)."""
        q = select(placements.c.replica_id, placements.c.rejected).where(placements.c.rejected != "")
        if sid:
            q = q.where(placements.c.replica_id.like(f"{sid}-%"))
        out: dict[str, dict[str, str]] = {}
        with self.ctx.engine.connect() as conn:
            for rid, reason in conn.execute(q):
                out.setdefault(domain.service_of(rid), {})[rid] = reason
        return out

    # -- queries ---------------------------------------------------------------------------------------

    def _doc(self, sid: str, include_deleted: bool = False) -> domain.Group:
        with self.ctx.engine.connect() as conn:
            row = conn.execute(select(services.c.doc, services.c.deleted).where(services.c.id == sid)).first()
        if row is None or (row[1] and not include_deleted) or _visible(json.loads(row[0])) is None:
            raise NotFound(f"service {sid} does not exist")
        g: domain.Group = json.loads(row[0])
        return g

    def get(self, sid: str, include_deleted: bool = False) -> dict[str, Any]:
        return view(self._doc(sid, include_deleted))

    def list_services(self, *, page_size: int, page_token: str, creator: str, status: str) -> tuple[list[dict[str, Any]], str, int]:
        size, offset = page_bounds(page_size, page_token)
        conds: list[ColumnElement[bool]] = [services.c.deleted.is_(False)]
        if tenant := current_caller().tenant:  # a user sees its tenant's services only
            conds.append(services.c.tenant == tenant)
        if creator:
            conds.append(services.c.creator == creator)
        if status:
            conds.append(services.c.status == status)
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(services).where(*conds)).scalar() or 0)
            rows = conn.execute(select(services.c.doc).where(*conds).order_by(services.c.created_at_ms.desc(),
                                                                              services.c.id)
                                .limit(size).offset(offset)).all()
        return [view(json.loads(r[0])) for r in rows], next_token(offset, size, total), total

    def routes(self, revision: int) -> tuple[int, list[domain.Group] | None]:
        """The routing table (every group that exists), or None when ``revision`` is still current."""
        with self.ctx.engine.connect() as conn:
            current = int(conn.execute(select(func.max(services.c.seq))).scalar() or 0)
            if revision and revision == current:
                return current, None
            docs = conn.execute(select(services.c.doc).where(services.c.deleted.is_(False))
                                .order_by(services.c.id)).scalars().all()
        return current, [json.loads(d) for d in docs]

    async def history(self, sid: str, *, records_only: bool) -> list[dict[str, Any]]:
        """Update records (changes people or the autoscaler made: who, when, what), or the events of the
        last 24 hours (``records_only=False``), newest first, from the group's event log."""
        await asyncio.to_thread(self._doc, sid, True)
        recorded, _ = await self.ctx.store.load(self._subject(sid))
        since = self.clock.now_ms() - EVENTS_WINDOW_MS
        out = []
        for r in recorded:
            d = describe(r.event, r.time_ms)
            if d is None or (records_only and not d["by"]) or (not records_only and d["at_ms"] < since):
                continue
            out.append(d)
        return out[::-1]

    async def logs(self, sid: str, rid: str, *, start_ms: int, end_ms: int, keyword: str, limit: int, after_seq: int,
                   source: str, sidecar: bool = False) -> tuple[list[dict[str, Any]], int]:
        """Instance logs, oldest first: one instance (``rid``), or every instance the group has now; their
        servers' lines, or (``sidecar``) their sidecars' (the agent ships those as instance 1)."""
        g = await asyncio.to_thread(self._doc, sid, True)
        if rid and rid not in g["replicas"] and not rid.startswith(f"{sid}-v"):
            raise NotFound(f"service {sid} has no instance {rid}")
        if len(keyword) > 256:
            raise InvalidArgument("keyword must be at most 256 characters", field="keyword")
        ids = [rid] if rid else sorted(g["replicas"])
        out: list[dict[str, Any]] = []
        last = after_seq
        for one in ids:
            lines, seq = await read_logs(self.ctx.js, one, start_ms=start_ms, end_ms=end_ms, keyword=keyword,
                                         instance_index=1 if sidecar else 0, after_seq=after_seq if rid else 0,
                                         limit=limit,
                                         source=source)
            out += [{"ts_ms": x.ts_ms, "replica_id": one, "stream": x.stream, "line": x.line, "seq": x.seq}
                    for x in lines]
            last = max(last, seq)
        out.sort(key=lambda x: (x["ts_ms"], x["seq"]))
        return out[:limit or 1000], last

    def list_agents(self) -> list[dict[str, Any]]:
        with self.ctx.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(agents).order_by(agents.c.name)).mappings()]


def view(g: domain.Group) -> dict[str, Any]:
    """A group as callers see it (keys without their hashes)."""
    reps = sorted(g["replicas"].values(), key=lambda r: r["order"])
    versions = []
    for v in sorted(domain.live_versions(g), key=lambda v: v["number"]):
        mine = [r for r in reps if r["version_id"] == v["id"]]
        versions.append({
            "id": v["id"], "number": v["number"], "revision": v["revision"], "spec": v["spec"], "weight": v["weight"],
            "replicas": v["replicas"], "ready_replicas": sum(1 for r in mine if domain.serving(r)),
            "autoscaling": v["autoscaling"], "failed": v["failed"], "created_at_ms": v["created_at_ms"],
        })
    return {
        "id": g["id"], "name": g["name"], "description": g["description"], "tags": g["tags"],
        "deployment_mode": g["deployment_mode"], "status": domain.status(g), "state_reason": g.get("state_reason", ""),
        "auth_enabled": g["auth_enabled"], "group_qps_limit": g["group_qps_limit"],
        "auto_stop_at_ms": g["auto_stop_at_ms"], "creator": g["creator"], "tenant": g.get("tenant", ""),
        "created_at_ms": g["created_at_ms"],
        "updated_at_ms": g["updated_at_ms"], "versions": versions,
        "running_versions": sum(1 for v in versions if v["ready_replicas"]),
        "expected_replicas": sum(domain.desired_replicas(g, v) for v in domain.live_versions(g)),
        "running_replicas": sum(1 for r in reps if domain.serving(r)),
        "instances": [{
            "id": r["id"], "version_id": r["version_id"], "state": _replica_state(r), "address": r["address"],
            "isolated": r["isolated"], "generation": r["generation"], "restarts": r["restarts"],
            "exit_code": r["exit_code"], "message": r["message"], "created_at_ms": r["created_at_ms"],
        } for r in reps],
        "keys": [{k: key[k] for k in ("id", "remark", "enabled", "tokens_per_minute", "tokens_per_day",
                                       "created_at_ms")} for key in g["keys"].values()],
    }


def _replica_state(r: dict[str, Any]) -> str:
    if r["stopping_at_ms"]:
        return "Stopping"
    if r["draining_at_ms"]:
        return "Draining"
    if domain.serving(r) and r["isolated"]:
        return "Ready (isolated)"
    return str(r["state"])


def _visible(g: domain.Group | None) -> domain.Group | None:
    """The group as the current caller may see it: another tenant's group does not exist for a user (404,
    not 403, so existence does not leak); the platform, agents and the operator see every group."""
    tenant = current_caller().tenant
    if g is not None and tenant and g.get("tenant", "") != tenant:
        return None
    return g
