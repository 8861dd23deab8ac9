"""A service's events in words: update records (who changed what, when) and lifecycle events (24 h)."""

from __future__ import annotations

from typing import Any

from capstan_core.contracts import serving as s
from capstan_core.events import Event


def _what(e: Event) -> tuple[str, str, str]:  # noqa: C901 - one line per event type
    """(level, resource, message)"""
    if isinstance(e, s.ServiceCreated):
        return "Info", e.service_id, f"service {e.name} created ({e.deployment_mode} deployment)"
    if isinstance(e, s.ServiceVersionCreated):
        return "Info", e.version_id, f"version {e.number} created: {e.spec['runtime']} runtime, {e.spec['replicas']} replica(s), weight {e.weight}"
    if isinstance(e, s.ServiceVersionUpdated):
        return "Info", e.version_id, f"updated (revision {e.revision}): {', '.join(e.what)}; rolling the replicas"
    if isinstance(e, s.ServiceVersionScaled):
        return "Info", e.version_id, f"replicas set to {e.replicas}" + (f" ({e.reason})" if e.reason else "")
    if isinstance(e, s.ServiceAutoscalingSet):
        return "Info", e.version_id, f"autoscaling: {e.autoscaling['mode']}"
    if isinstance(e, s.ServiceVersionDeleted):
        return "Info", e.version_id, "version deleted"
    if isinstance(e, s.ServiceVersionFailed):
        return "Error", e.version_id, e.reason
    if isinstance(e, s.ServiceWeightsSet):
        return "Info", e.service_id, "traffic weights: " + ", ".join(f"{k}={w}" for k, w in sorted(e.weights.items()))
    if isinstance(e, s.ServiceStateChanged):
        return "Info", e.service_id, f"{e.state.lower()}" + (f": {e.reason}" if e.reason else "")
    if isinstance(e, s.ServiceUpdated):
        return "Info", e.service_id, f"changed: {', '.join(e.what)}"
    if isinstance(e, s.ServiceDeleted):
        return "Info", e.service_id, "deleted"
    if isinstance(e, s.ServiceReplicaAdded):
        return "Info", e.replica_id, "instance requested from the scheduler"
    if isinstance(e, s.ServiceReplicaReported):
        level = "Warning" if e.state in ("Exited", "NotReady") else "Info"
        extra = f" (exit code {e.exit_code})" if e.state == "Exited" else ""
        return level, e.replica_id, f"{e.state}{extra}" + (f": {e.message}" if e.message else "")
    if isinstance(e, s.ServiceReplicaRestarted):
        return "Warning", e.replica_id, e.reason
    if isinstance(e, s.ServiceReplicaIsolated):
        return "Info", e.replica_id, "isolated: no new traffic" if e.isolated else "un-isolated: receives traffic again"
    if isinstance(e, s.ServiceReplicaRebuildRequested):
        return "Info", e.replica_id, "rebuild requested: a fresh instance replaces it"
    if isinstance(e, s.ServiceReplicaDraining):
        return "Info", e.replica_id, f"out of the routing table ({e.reason}); stopping after the drain delay"
    if isinstance(e, s.ServiceReplicaStopping):
        return "Info", e.replica_id, "stopping: pre-stop, then the grace period"
    if isinstance(e, s.ServiceReplicaRemoved):
        return "Info", e.replica_id, f"removed ({e.reason})"
    if isinstance(e, s.ServiceKeyCreated):
        return "Info", e.key_id, "key created"
    if isinstance(e, s.ServiceKeyUpdated):
        return "Info", e.key_id, f"key {'enabled' if e.enabled else 'disabled'}; limits {e.tokens_per_minute}/min, {e.tokens_per_day}/day"
    if isinstance(e, s.ServiceKeyDeleted):
        return "Info", e.key_id, "key deleted"
    return "", "", ""


def describe(e: Event, time_ms: int) -> dict[str, Any] | None:
    level, resource, message = _what(e)
    if not level:
        return None  # the scheduler's contract events in the same commits
    return {"at_ms": getattr(e, "at_ms", time_ms) or time_ms, "level": level, "kind": e.TYPE, "resource": resource,
            "message": message, "by": getattr(e, "by", "") or getattr(e, "creator", "")}
