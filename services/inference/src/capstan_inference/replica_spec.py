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


def model_dir(model: dict[str, Any], storage_root: str) -> str:
    """The directory on the node mounted read-only at /data/model ("" for none): a registry version's
    materialised files, or a directory of the platform storage."""
    if model["kind"] == "none":
        return ""
    base = model["path"] if model["kind"] == "registry" else os.path.join(storage_root, model["path"])
    return os.path.join(base, model.get("subdir", "")).rstrip("/")


def replica_spec(g: domain.Group, r: dict[str, Any], node_id: str, storage_root: str) -> dict[str, Any]:
    v = g["versions"][r["version_id"]]
    spec = v["specs"].get(str(r["revision"])) or v["spec"]
    mdir = model_dir(spec["model"], storage_root)
    env = {**spec["env"], "PORT": str(spec["port"])}
    if mdir:
        env["MODEL_DIR"] = "/data/model"
    name = served_name(g, spec)
    stopping = g["state"] == "Deleted" or bool(r["stopping_at_ms"])
    return {
        "replica_id": r["id"], "service_id": g["id"], "version_id": v["id"], "node_id": node_id,
        "desired_state": "Stopped" if stopping else "Running",
        "command": engine_argv(spec["runtime"], port=spec["port"], served_model_name=name, env=env,
                               command=spec["command"]),
        "env": env, "port": spec["port"], "image": spec["image"], "model_dir": mdir,
        "resources": spec["resources"], "probes": spec["probes"], "pre_stop": spec["pre_stop"],
        "grace_period_s": spec["grace_period_s"], "network_mode": "isolated", "generation": r["generation"],
        "sidecar": spec.get("sidecar"),  # versions written before sidecars have none
    }
