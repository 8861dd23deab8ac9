"""What one replica runs, as its agent reads it (``GetReplicaSpec``): built from the version's spec at the
revision the replica was created with (a rolling update replaces replicas; it never changes one)."""

from __future__ import annotations

import os
from typing import Any

from .domain import group as domain
from .runtimes import engine_argv


def served_name(g: domain.Group, spec: dict[str, Any]) -> str:
    """The name the engine answers to; the gateway rewrites the caller's ``model`` (the ms-id) to it."""
    return str(spec["served_model_name"] or g["id"])


def replica_spec(g: domain.Group, r: dict[str, Any], node_id: str) -> dict[str, Any]:
    v = g["versions"][r["version_id"]]
    spec = v["specs"].get(str(r["revision"])) or v["spec"]
    model = spec["model"]
    model_dir = os.path.join(model["path"], model.get("subdir", "")) if model["kind"] != "none" else ""
    env = {**spec["env"], "PORT": str(spec["port"])}
    if model_dir:
        env["MODEL_DIR"] = "/data/model"
    name = served_name(g, spec)
    stopping = g["state"] == "Deleted" or bool(r["stopping_at_ms"])
    return {
        "replica_id": r["id"], "service_id": g["id"], "version_id": v["id"], "node_id": node_id,
        "desired_state": "Stopped" if stopping else "Running",
        "command": engine_argv(spec["runtime"], port=spec["port"], served_model_name=name, env=env,
                               command=spec["command"]),
        "env": env, "port": spec["port"], "image": spec["image"], "model_dir": model_dir,
        "resources": spec["resources"], "probes": spec["probes"], "pre_stop": spec["pre_stop"],
        "grace_period_s": spec["grace_period_s"], "network_mode": "isolated", "generation": r["generation"],
    }
