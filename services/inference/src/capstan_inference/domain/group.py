"""A service group as one aggregate: fold its events into plain data, decide commands. Pure.

The state is JSON-shaped (dicts and lists) so the read model stores the same fold (``projections.py``).
Each ``decide_*`` returns the events to append, or raises a ``DomainError`` (then nothing is appended);
an idempotent repeat returns no events.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import CAPABILITY_SERVING, WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.contracts.serving import (
    ServiceAutoscalingSet,
    ServiceCreated,
    ServiceDeleted,
    ServiceKeyCreated,
    ServiceKeyDeleted,
    ServiceKeyUpdated,
    ServiceReplicaAdded,
    ServiceReplicaDraining,
    ServiceReplicaIsolated,
    ServiceReplicaRebuildRequested,
    ServiceReplicaRemoved,
    ServiceReplicaReported,
    ServiceReplicaRestarted,
    ServiceReplicaStopping,
    ServiceStateChanged,
    ServiceUpdated,
    ServiceVersionCreated,
    ServiceVersionDeleted,
    ServiceVersionFailed,
    ServiceVersionScaled,
    ServiceVersionUpdated,
    ServiceWeightsSet,
)
from capstan_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from capstan_core.events import Event

from . import rolling
from .spec import MAX_REPLICAS, changed_fields

Group = dict[str, Any]
REPORT_STATES = ("Starting", "Ready", "NotReady", "Exited", "Stopped")
MAX_VERSIONS = 10
MAX_KEYS = 20
STOP_MARGIN_MS = 60_000  # a stopping replica whose agent never answers is removed after its grace + this
DEPLOYMENT_MODES = ("standard", "multi-instance")


def version_id(service_id: str, number: int) -> str:
    return f"{service_id}-v{number}"


def replica_id(service_id: str, number: int, n: int) -> str:
    """One NATS subject token (no dots): the replica's workload id and log subject."""
    return f"{service_id}-v{number}-{n}"


def service_of(rid: str) -> str:
    """The service id in a replica id ("" when it is none): ``ms-xxxxxxxx`` may itself hold "-v"."""
    sid, sep, rest = rid.rpartition("-v")
    number, dash, n = rest.partition("-")
    if not (sid.startswith("ms-") and sep and number.isdigit() and dash and n.isdigit()):
        return ""
    return sid


# -- fold ----------------------------------------------------------------------------------------------


def fold(events: Iterable[Event]) -> Group | None:
    g: Group | None = None
    for e in events:
        g = apply(g, e)
    return g


def apply(g: Group | None, e: Event) -> Group | None:  # noqa: C901 - one branch per event type
    """``g`` after ``e`` (``g`` is changed in place when it exists)."""
    if isinstance(e, ServiceCreated):
        return {"id": e.service_id, "name": e.name, "description": e.description, "tags": dict(e.tags),
                "deployment_mode": e.deployment_mode, "auth_enabled": e.auth_enabled,
                "group_qps_limit": e.group_qps_limit, "auto_stop_at_ms": e.auto_stop_at_ms, "creator": e.creator,
                "tenant": e.tenant,
                "created_at_ms": e.at_ms, "updated_at_ms": e.at_ms, "state": "Running", "next_version": 1,
                "next_replica": 1, "versions": {}, "replicas": {}, "keys": {}}
    if g is None or not _refers_to_known(g, e):
        return g  # total: an event about something this group never had changes nothing
    if isinstance(e, ServiceVersionCreated):
        g["versions"][e.version_id] = {
            "id": e.version_id, "number": e.number, "spec": e.spec, "revision": 1, "specs": {"1": e.spec},
            "replicas": e.spec["replicas"], "autoscaling": {"mode": "manual"}, "weight": e.weight,
            "failed": "", "ever_ready": False, "failures": 0, "created_at_ms": e.at_ms, "last_scaled_ms": e.at_ms,
        }
        g["next_version"] = e.number + 1
    elif isinstance(e, ServiceVersionUpdated):
        v = g["versions"][e.version_id]
        v.update(spec=e.spec, revision=e.revision, replicas=e.spec["replicas"], failed="", failures=0)
        v["specs"][str(e.revision)] = e.spec
        _prune_specs(g, v)
    elif isinstance(e, ServiceVersionScaled):
        g["versions"][e.version_id].update(replicas=e.replicas, last_scaled_ms=e.at_ms)
    elif isinstance(e, ServiceAutoscalingSet):
        g["versions"][e.version_id]["autoscaling"] = e.autoscaling
    elif isinstance(e, ServiceVersionDeleted):
        g["versions"][e.version_id]["deleted"] = True
    elif isinstance(e, ServiceVersionFailed):
        g["versions"][e.version_id]["failed"] = e.reason
    elif isinstance(e, ServiceWeightsSet):
        for vid, w in e.weights.items():
            if vid in g["versions"]:
                g["versions"][vid]["weight"] = w
    elif isinstance(e, ServiceStateChanged):
        g["state"] = e.state
        g["state_reason"] = e.reason
        if e.state == "Running":  # started again: a failed first deployment gets its retries afresh
            for v in g["versions"].values():
                v.update(failed="", failures=0)
    elif isinstance(e, ServiceUpdated):
        g.update(description=e.description, tags=dict(e.tags), auth_enabled=e.auth_enabled,
                 group_qps_limit=e.group_qps_limit, auto_stop_at_ms=e.auto_stop_at_ms)
    elif isinstance(e, ServiceDeleted):
        g["state"] = "Deleted"
    elif isinstance(e, ServiceReplicaAdded):
        g["replicas"][e.replica_id] = {
            "id": e.replica_id, "version_id": e.version_id, "revision": e.revision,
            "resources": e.resources.model_dump(), "state": "Pending", "address": "", "generation": 1,
            "reported_generation": 0, "isolated": False, "rebuild": False, "draining_at_ms": 0, "stopping_at_ms": 0,
            "exit_code": 0, "message": "", "restarts": 0, "created_at_ms": e.at_ms, "order": g["next_replica"],
        }
        g["next_replica"] += 1
    elif isinstance(e, ServiceReplicaReported):
        r = g["replicas"][e.replica_id]
        r.update(state=e.state, address=e.address, exit_code=e.exit_code, message=e.message,
                 reported_generation=e.generation)
        if e.state == "Ready":
            g["versions"][r["version_id"]]["ever_ready"] = True
    elif isinstance(e, ServiceReplicaRestarted):
        r = g["replicas"][e.replica_id]
        r.update(generation=e.generation, state="Pending", address="", restarts=r["restarts"] + 1, message=e.reason)
        g["versions"][r["version_id"]]["failures"] += 1
    elif isinstance(e, ServiceReplicaIsolated):
        g["replicas"][e.replica_id]["isolated"] = e.isolated
    elif isinstance(e, ServiceReplicaRebuildRequested):
        g["replicas"][e.replica_id]["rebuild"] = True
    elif isinstance(e, ServiceReplicaDraining):
        g["replicas"][e.replica_id].update(draining_at_ms=e.at_ms, message=e.reason)
    elif isinstance(e, ServiceReplicaStopping):
        g["replicas"][e.replica_id]["stopping_at_ms"] = e.at_ms
    elif isinstance(e, ServiceReplicaRemoved):
        r = g["replicas"].pop(e.replica_id)
        if e.reason.startswith("not scheduled"):
            g["versions"][r["version_id"]]["failures"] += 1
        _prune_specs(g, g["versions"][r["version_id"]])
    elif isinstance(e, ServiceKeyCreated):
        g["keys"][e.key_id] = {"id": e.key_id, "secret_sha256": e.secret_sha256, "remark": e.remark,
                               "enabled": True, "tokens_per_minute": e.tokens_per_minute,
                               "tokens_per_day": e.tokens_per_day, "created_at_ms": e.at_ms}
    elif isinstance(e, ServiceKeyUpdated) and e.key_id in g["keys"]:
        g["keys"][e.key_id].update(enabled=e.enabled, remark=e.remark, tokens_per_minute=e.tokens_per_minute,
                                   tokens_per_day=e.tokens_per_day)
    elif isinstance(e, ServiceKeyDeleted):
        g["keys"].pop(e.key_id, None)
    else:
        return g
    g["updated_at_ms"] = max(g["updated_at_ms"], getattr(e, "at_ms", 0))
    return g


def _refers_to_known(g: Group, e: Event) -> bool:
    """Whether the version / replica ``e`` is about exists (creating events name new ones)."""
    vid = getattr(e, "version_id", None)
    if vid is not None and not isinstance(e, ServiceVersionCreated) and vid not in g["versions"]:
        return False
    rid = getattr(e, "replica_id", None)
    return rid is None or isinstance(e, ServiceReplicaAdded) or rid in g["replicas"]


def _prune_specs(g: Group, v: dict[str, Any]) -> None:
    """Keep only the spec revisions a replica still runs (and the newest)."""
    used = {str(r["revision"]) for r in g["replicas"].values() if r["version_id"] == v["id"]}
    v["specs"] = {k: s for k, s in v["specs"].items() if k in used or k == str(v["revision"])}


# -- views ---------------------------------------------------------------------------------------------


def serving(r: dict[str, Any]) -> bool:
    """Ready, at its newest generation, not on its way out."""
    return (r["state"] == "Ready" and r["reported_generation"] == r["generation"] and not r["draining_at_ms"])


def routable(r: dict[str, Any]) -> bool:
    return serving(r) and not r["isolated"]


def live_versions(g: Group) -> list[dict[str, Any]]:
    return [v for v in g["versions"].values() if not v.get("deleted")]


def status(g: Group) -> str:
    """The group's state as users see it."""
    if g["state"] in ("Stopped", "Deleting", "Deleted"):
        has = bool(g["replicas"])
        return {"Stopped": "Stopping" if has else "Stopped", "Deleting": "Deleting", "Deleted": "Deleted"}[g["state"]]
    versions = live_versions(g)
    if versions and all(v["failed"] for v in versions):
        return "Failed"
    for v in versions:
        if v["failed"]:
            continue
        mine = [r for r in g["replicas"].values() if r["version_id"] == v["id"] and not r["draining_at_ms"]]
        current = [r for r in mine if r["revision"] == v["revision"] and not r["rebuild"]]
        if len(mine) != len(current) or len(current) != v["replicas"]:
            return "Updating" if v["ever_ready"] else "Deploying"
        if sum(1 for r in current if serving(r)) < v["replicas"]:
            return "Updating" if v["ever_ready"] else "Deploying"
    if any(r["draining_at_ms"] for r in g["replicas"].values()):
        return "Updating"
    return "Running"


# -- commands ------------------------------------------------------------------------------------------


def _exists(g: Group | None, service_id: str) -> Group:
    if g is None or g["state"] == "Deleted":
        raise NotFound(f"service {service_id} does not exist")
    return g


def _not_deleting(g: Group) -> None:
    if g["state"] == "Deleting":
        raise FailedPrecondition(f"service {g['id']} is being deleted")


def _version(g: Group, vid: str) -> dict[str, Any]:
    v = g["versions"].get(vid)
    if v is None or v.get("deleted"):
        known = ", ".join(x["id"] for x in live_versions(g))
        raise NotFound(f"service {g['id']} has no version {vid} (versions: {known})")
    return v


def _replica(g: Group, rid: str) -> dict[str, Any]:
    r = g["replicas"].get(rid)
    if r is None or r["draining_at_ms"]:
        raise NotFound(f"service {g['id']} has no running instance {rid}")
    return r


def decide_create(g: Group | None, *, service_id: str, name: str, description: str, tags: dict[str, str],
                  deployment_mode: str, auth_enabled: bool, auto_stop_at_ms: int, spec: dict[str, Any],
                  creator: str, now_ms: int, tenant: str = "") -> list[Event]:
    if deployment_mode not in DEPLOYMENT_MODES:
        raise InvalidArgument("deployment_mode must be standard or multi-instance", field="deployment_mode")
    if g is not None:
        if g["name"] == name and g["creator"] == creator:
            return []  # a retry of the same create
        raise AlreadyExists(f"service {service_id} already exists")
    if auto_stop_at_ms and auto_stop_at_ms <= now_ms:
        raise InvalidArgument("auto_stop_at must be in the future", field="auto_stop_at")
    return [
        ServiceCreated(service_id=service_id, name=name, description=description, tags=tags,
                       deployment_mode=deployment_mode, auth_enabled=auth_enabled, auto_stop_at_ms=auto_stop_at_ms,
                       creator=creator, at_ms=now_ms, tenant=tenant),
        ServiceVersionCreated(service_id=service_id, version_id=version_id(service_id, 1), number=1, spec=spec,
                              weight=100, by=creator, at_ms=now_ms),
    ]


def decide_add_version(g: Group | None, service_id: str, spec: dict[str, Any], weight: int, by: str,
                       now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    _not_deleting(g)
    if len(live_versions(g)) >= MAX_VERSIONS:
        raise FailedPrecondition(f"service {service_id} has {MAX_VERSIONS} versions already; delete one first")
    if not 0 <= weight <= 100:
        raise InvalidArgument("weight must be 0..100", field="weight")
    n = g["next_version"]
    return [ServiceVersionCreated(service_id=service_id, version_id=version_id(service_id, n), number=n, spec=spec,
                                  weight=weight, by=by, at_ms=now_ms)]


def decide_update_version(g: Group | None, service_id: str, vid: str, spec: dict[str, Any], by: str,
                          now_ms: int) -> list[Event]:
    """A rolling update: the version's replicas are replaced by ones running ``spec``."""
    g = _exists(g, service_id)
    _not_deleting(g)
    v = _version(g, vid)
    what = changed_fields(v["spec"], spec)
    if not what:
        return []
    return [ServiceVersionUpdated(service_id=service_id, version_id=vid, revision=v["revision"] + 1, spec=spec,
                                  what=what, by=by, at_ms=now_ms)]


def decide_delete_version(g: Group | None, service_id: str, vid: str, by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    _version(g, vid)
    if len(live_versions(g)) == 1:
        raise FailedPrecondition(f"{vid} is the only version of service {service_id}; delete the service instead")
    return [ServiceVersionDeleted(service_id=service_id, version_id=vid, by=by, at_ms=now_ms)]


def decide_scale(g: Group | None, service_id: str, vid: str, replicas: int, by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    _not_deleting(g)
    v = _version(g, vid)
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be 0..{MAX_REPLICAS}", field="replicas")
    events: list[Event] = []
    if v["autoscaling"]["mode"] != "manual" and by != "autoscaler":
        events.append(ServiceAutoscalingSet(service_id=service_id, version_id=vid, autoscaling={"mode": "manual"},
                                            by=by, at_ms=now_ms))
    if v["replicas"] != replicas:
        events.append(ServiceVersionScaled(service_id=service_id, version_id=vid, replicas=replicas, by=by,
                                           at_ms=now_ms))
    return events


def decide_autoscaling(g: Group | None, service_id: str, vid: str, cfg: dict[str, Any], by: str,
                       now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    v = _version(g, vid)
    if v["autoscaling"] == cfg:
        return []
    return [ServiceAutoscalingSet(service_id=service_id, version_id=vid, autoscaling=cfg, by=by, at_ms=now_ms)]


def decide_weights(g: Group | None, service_id: str, weights: dict[str, int], by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    for vid, w in weights.items():
        _version(g, vid)
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 100:
            raise InvalidArgument(f"weight of {vid} must be 0..100", field="weights")
    merged = {v["id"]: weights.get(v["id"], v["weight"]) for v in live_versions(g)}
    if sum(merged.values()) == 0:
        raise InvalidArgument("at least one version needs a weight above 0, or nothing can be called",
                              field="weights")
    if all(g["versions"][k]["weight"] == w for k, w in weights.items()):
        return []
    return [ServiceWeightsSet(service_id=service_id, weights=weights, by=by, at_ms=now_ms)]


def decide_state(g: Group | None, service_id: str, state: str, by: str, now_ms: int, reason: str = "") -> list[Event]:
    g = _exists(g, service_id)
    if g["state"] == state:
        return []
    _not_deleting(g)
    return [ServiceStateChanged(service_id=service_id, state=state, by=by, reason=reason, at_ms=now_ms)]


def decide_update_group(g: Group | None, service_id: str, changes: dict[str, Any], by: str,
                        now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    _not_deleting(g)
    fields = ("description", "tags", "auth_enabled", "group_qps_limit", "auto_stop_at_ms")
    new: dict[str, Any] = {k: changes.get(k, g[k]) for k in fields}
    if new["auto_stop_at_ms"] and new["auto_stop_at_ms"] != g["auto_stop_at_ms"] and new["auto_stop_at_ms"] <= now_ms:
        raise InvalidArgument("auto_stop_at must be in the future", field="auto_stop_at")
    what = [k for k in fields if new[k] != g[k]]
    if not what:
        return []
    return [ServiceUpdated(service_id=service_id, what=what, by=by, at_ms=now_ms, **new)]


def decide_isolate(g: Group | None, service_id: str, rid: str, isolated: bool, by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    r = _replica(g, rid)
    if r["isolated"] == isolated:
        return []
    return [ServiceReplicaIsolated(service_id=service_id, replica_id=rid, isolated=isolated, by=by, at_ms=now_ms)]


def decide_rebuild(g: Group | None, service_id: str, rid: str, by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    r = _replica(g, rid)
    if r["rebuild"]:
        return []
    return [ServiceReplicaRebuildRequested(service_id=service_id, replica_id=rid, by=by, at_ms=now_ms)]


def decide_create_key(g: Group | None, service_id: str, *, key_id: str, secret_sha256: str, remark: str,
                      tokens_per_minute: int, tokens_per_day: int, by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    if key_id in g["keys"]:
        return []
    if len(g["keys"]) >= MAX_KEYS:
        raise FailedPrecondition(f"service {service_id} has {MAX_KEYS} keys already; delete one first")
    _check_key_fields(remark, tokens_per_minute, tokens_per_day)
    return [ServiceKeyCreated(service_id=service_id, key_id=key_id, secret_sha256=secret_sha256, remark=remark,
                              tokens_per_minute=tokens_per_minute, tokens_per_day=tokens_per_day, by=by, at_ms=now_ms)]


def _check_key_fields(remark: str, tpm: int, tpd: int) -> None:
    if len(remark) > 200:
        raise InvalidArgument("remark must be at most 200 characters", field="remark")
    for name, value in (("tokens_per_minute", tpm), ("tokens_per_day", tpd)):
        if not 0 <= value <= 10**12:
            raise InvalidArgument(f"{name} must be 0 (no limit)..10^12", field=name)


def decide_update_key(g: Group | None, service_id: str, key_id: str, changes: dict[str, Any], by: str,
                      now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    k = g["keys"].get(key_id)
    if k is None:
        raise NotFound(f"service {service_id} has no key {key_id}")
    fields = ("enabled", "remark", "tokens_per_minute", "tokens_per_day")
    new = {f: changes.get(f, k[f]) for f in fields}
    _check_key_fields(new["remark"], new["tokens_per_minute"], new["tokens_per_day"])
    if all(new[f] == k[f] for f in fields):
        return []
    return [ServiceKeyUpdated(service_id=service_id, key_id=key_id, by=by, at_ms=now_ms, **new)]


def decide_delete_key(g: Group | None, service_id: str, key_id: str, by: str, now_ms: int) -> list[Event]:
    g = _exists(g, service_id)
    if key_id not in g["keys"]:
        raise NotFound(f"service {service_id} has no key {key_id}")
    return [ServiceKeyDeleted(service_id=service_id, key_id=key_id, by=by, at_ms=now_ms)]


def decide_report(g: Group | None, service_id: str, rid: str, *, state: str, address: str, exit_code: int,
                  message: str, generation: int, now_ms: int) -> list[Event]:
    """What an agent reports; appended only when it changed. A report about an older generation (a
    restarted replica's previous process) changes nothing."""
    if state not in REPORT_STATES:
        raise InvalidArgument(f"state must be one of {', '.join(REPORT_STATES)}", field="state")
    if len(address) > 256 or len(message) > 2000:
        raise InvalidArgument("address (256) or message (2000 characters) is too long", field="message")
    if g is None or rid not in g["replicas"]:
        raise NotFound(f"replica {rid} does not exist")
    r = g["replicas"][rid]
    if generation and generation < r["generation"]:
        return []
    if state in ("Exited", "Stopped"):
        address = ""
    same = (r["state"], r["address"], r["exit_code"], r["reported_generation"]) == (
        state, address, exit_code, generation or r["generation"])
    if same:
        return []
    return [ServiceReplicaReported(service_id=service_id, replica_id=rid, state=state, address=address,
                                   exit_code=exit_code, message=message, generation=generation or r["generation"],
                                   at_ms=now_ms)]


# -- the control loop ----------------------------------------------------------------------------------


def desired_replicas(g: Group, v: dict[str, Any]) -> int:
    if g["state"] != "Running" or v.get("deleted") or v["failed"]:
        return 0
    return v["replicas"]


def decide_reconcile(g: Group | None, *, now_ms: int, drain_delay_ms: int, rejected: dict[str, str],
                     autoscale: Callable[[Group, dict[str, Any]], int | None] | None = None) -> list[Event]:
    """Everything the group needs now: auto-stop, autoscaling, restarts, the rollout plan, draining,
    stopping and removing replicas. ``rejected``: replicas the scheduler refused (id -> reason)."""
    if g is None or g["state"] == "Deleted":
        return []
    g = copy.deepcopy(g)
    sid = g["id"]
    out: list[Event] = []

    def emit(events: Sequence[Event]) -> None:
        for e in events:
            apply(g, e)
            out.append(e)

    if g["state"] == "Running" and g["auto_stop_at_ms"] and now_ms >= g["auto_stop_at_ms"]:
        emit([ServiceStateChanged(service_id=sid, state="Stopped", by="auto-stop",
                                  reason="stopped at its auto-stop time", at_ms=now_ms)])
    for v in list(g["versions"].values()):
        if autoscale is not None and g["state"] == "Running" and not v.get("deleted"):
            wanted = autoscale(g, v)
            if wanted is not None and wanted != v["replicas"]:
                emit([ServiceVersionScaled(service_id=sid, version_id=v["id"], replicas=wanted, by="autoscaler",
                                           reason=v["autoscaling"]["mode"], at_ms=now_ms)])
        emit(_restarts(g, v, rejected, now_ms))
        emit(_rollout(g, v, now_ms))
    emit(_drain_and_remove(g, now_ms, drain_delay_ms))
    if g["state"] == "Deleting" and not g["replicas"]:
        emit([ServiceDeleted(service_id=sid, at_ms=now_ms)])
    return out


def _restarts(g: Group, v: dict[str, Any], rejected: dict[str, str], now_ms: int) -> list[Event]:
    out: list[Event] = []
    retries = v["spec"]["deploy_retries"]
    if not desired_replicas(g, v):
        return out  # what runs is being retired: nothing to start again
    for r in sorted(g["replicas"].values(), key=lambda r: r["order"]):
        if r["version_id"] != v["id"] or r["draining_at_ms"]:
            continue
        exited = r["state"] == "Exited" and r["reported_generation"] == r["generation"]
        if not exited and r["id"] not in rejected:
            continue
        first = not v["ever_ready"]
        if first and retries and v["failures"] >= retries and not v["failed"]:
            why = rejected.get(r["id"]) or f"exit code {r['exit_code']}: {r['message']}".rstrip(": ")
            out.append(ServiceVersionFailed(service_id=g["id"], version_id=v["id"], at_ms=now_ms,
                                            reason=f"deployment failed after {retries} retries (last: {why})"))
            v["failed"] = "x"  # this pass only: no restarts after failing
        if v["failed"]:
            continue
        if r["id"] in rejected:
            out.append(ServiceReplicaRemoved(service_id=g["id"], replica_id=r["id"], at_ms=now_ms,
                                             reason=f"not scheduled: {rejected[r['id']]}"))
            out.append(WorkloadWithdrawn(workload_id=r["id"], reason="not scheduled", at_ms=now_ms))
        else:
            out.append(ServiceReplicaRestarted(service_id=g["id"], replica_id=r["id"], generation=r["generation"] + 1,
                                               reason=f"exited with code {r['exit_code']}; started again",
                                               at_ms=now_ms))
    return out


def _rollout(g: Group, v: dict[str, Any], now_ms: int) -> list[Event]:
    mine = [r for r in g["replicas"].values() if r["version_id"] == v["id"] and not r["draining_at_ms"]]
    views = [rolling.ReplicaView(r["id"], r["revision"] == v["revision"] and not r["rebuild"], serving(r), r["order"])
             for r in mine]
    p = rolling.plan(desired_replicas(g, v), views, v["spec"]["max_surge_pct"], v["spec"]["max_unavailable_pct"])
    out: list[Event] = []
    for rid in p.retire:
        out.append(ServiceReplicaDraining(service_id=g["id"], replica_id=rid, at_ms=now_ms,
                                          reason=_retire_reason(g, v, g["replicas"][rid])))
    n = g["next_replica"]
    spec = v["spec"]
    res = ResourceSpec(**spec["resources"])
    placed = res  # what the node gives the replica: its server's resources and its sidecar's
    if side := spec.get("sidecar"):
        placed = res.model_copy(update={"cpu": res.cpu + side["cpu"], "memory_gib": res.memory_gib + side["memory_gib"]})
    for i in range(p.add):
        rid = replica_id(g["id"], v["number"], n + i)
        out.append(ServiceReplicaAdded(service_id=g["id"], version_id=v["id"], replica_id=rid, revision=v["revision"],
                                       resources=res, at_ms=now_ms))
        out.append(WorkloadSubmitted(workload_id=rid, kind="service", capability=CAPABILITY_SERVING,
                                     resource_group_id=spec["resource_group_id"], resources=placed,
                                     instance_count=spec["instances"], tags=g["tags"], at_ms=now_ms,
                                     tenant=g.get("tenant", "")))
    return out


def _retire_reason(g: Group, v: dict[str, Any], r: dict[str, Any]) -> str:
    if g["state"] != "Running":
        return f"service {g['state'].lower()}"
    if v.get("deleted"):
        return "version deleted"
    if r["rebuild"]:
        return "rebuilt"
    if r["revision"] != v["revision"]:
        return "replaced by the update"
    return "scaled in"


def _drain_and_remove(g: Group, now_ms: int, drain_delay_ms: int) -> list[Event]:
    out: list[Event] = []
    for r in sorted(g["replicas"].values(), key=lambda r: r["order"]):
        if not r["draining_at_ms"]:
            continue
        never_started = r["state"] == "Pending" and not r["reported_generation"]
        if not r["stopping_at_ms"]:
            if never_started or now_ms - r["draining_at_ms"] >= drain_delay_ms:
                out.append(ServiceReplicaStopping(service_id=g["id"], replica_id=r["id"], at_ms=now_ms))
                r = {**r, "stopping_at_ms": now_ms}
            else:
                continue
        spec = g["versions"][r["version_id"]]["specs"].get(str(r["revision"])) or g["versions"][r["version_id"]]["spec"]
        timeout = spec["grace_period_s"] * 1000 + STOP_MARGIN_MS
        ended = r["state"] in ("Stopped", "Exited") or never_started
        if ended or now_ms - r["stopping_at_ms"] >= timeout:
            out.append(ServiceReplicaRemoved(service_id=g["id"], replica_id=r["id"], reason=r["message"] or "retired",
                                             at_ms=now_ms))
            out.append(WorkloadWithdrawn(workload_id=r["id"], reason="retired", at_ms=now_ms))
    return out
