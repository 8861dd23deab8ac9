"""A service version's form (SPEC §6.2), validated and normalised: plain data, so an event can hold it.

``normalize(raw)`` turns what a caller sent (a JSON object) into the complete spec with every default
filled in, or raises ``InvalidArgument`` naming the field and what it accepts. Unknown fields are
refused (a typo must not silently deploy the default).
"""

from __future__ import annotations

import re
from typing import Any

from capstan_core import regions
from capstan_core.contracts.capacity import check_request
from capstan_core.errors import InvalidArgument
from capstan_engines.runtimes import build_argv

NAME_MAX = 60
DESCRIPTION_MAX = 500
NAME_RE = re.compile(r"^[^\W_][\w-]*$", re.UNICODE)
RUNTIMES = ("transformers", "vllm", "generic", "custom")
GPU_RUNTIMES = frozenset({"vllm"})  # built-in runtimes that need a card
PROTOCOL = {"transformers": "openai", "vllm": "openai", "generic": "predict", "custom": "http"}
DEFAULT_PORT = 8501  # REST
DEFAULT_GRPC_PORT = 8500
RESERVED_PORTS = frozenset({*range(8502, 8511), 6006, 9092})
MAX_REPLICAS = 100
MAX_INSTANCES = 16  # instances of one replica in multi-instance deployment
MAX_GRACE_S = 86400
DEFAULT_GRACE_S = 30
MAX_DEPLOY_RETRIES = 99
DEFAULT_DEPLOY_RETRIES = 5
GROUP_QPS_CAP = 500
MAX_ENV = 64
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
ENV_VALUE_MAX = 4096
COMMAND_MAX = 8192
ARG_MAX = 1024
MAX_ARGS = 32
PATH_MAX = 1024
PROBE_KINDS = ("http", "tcp", "exec")
PROBE_NAMES = ("startup", "readiness", "liveness")
RATE_LIMITS = ("none", "qps", "concurrency")
MAX_QUEUE = 10_000
MAX_QUEUE_TIMEOUT_MS = 600_000

DEFAULTS: dict[str, Any] = {
    "runtime": "transformers",
    "command": "",
    "image": "",
    "model": {"kind": "none"},
    "port": DEFAULT_PORT,
    "grpc": False,
    "resources": {"cpu": 1.0, "memory_gib": 2.0, "gpu_type": "", "gpu": 0.0},
    "instances": 1,
    "env": {},
    "probes": {},
    "grace_period_s": DEFAULT_GRACE_S,
    "pre_stop": [],
    "deploy_retries": DEFAULT_DEPLOY_RETRIES,
    "replicas": 1,
    "max_surge_pct": 25,
    "max_unavailable_pct": 25,
    "rate_limit": {"kind": "none", "value": 0, "queue_size": 0, "queue_timeout_ms": 0},
    "served_model_name": "",
    "resource_group_id": "",
    "description": "",
    "sidecar": None,
    "region": "",
}
FIELDS = tuple(DEFAULTS)
SIDECAR_FIELDS = ("image", "command", "env", "cpu", "memory_gib")
SIDECAR_DEFAULTS: dict[str, Any] = {"command": [], "env": {}, "cpu": 0.25, "memory_gib": 0.25}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > NAME_MAX or not NAME_RE.match(name):
        raise InvalidArgument(
            f"name must be 1..{NAME_MAX} letters, digits, '_' or '-', starting with a letter or a digit", field="name"
        )
    return name


def check_description(text: Any, field: str = "description") -> str:
    if not isinstance(text, str) or len(text) > DESCRIPTION_MAX:
        raise InvalidArgument(f"{field} must be text of at most {DESCRIPTION_MAX} characters", field=field)
    return text


def check_tags(tags: Any) -> dict[str, str]:
    if not isinstance(tags, dict) or len(tags) > 64:
        raise InvalidArgument("tags must be an object of at most 64 key=value pairs", field="tags")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 1 <= len(k) <= 128 or len(v) > 256:
            raise InvalidArgument("each tag is a key of 1..128 characters with a text value of at most 256",
                                  field="tags")
    return dict(tags)


def _int(raw: Any, field: str, lo: int, hi: int, what: str = "") -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or (isinstance(raw, float) and not raw.is_integer()):
        raise InvalidArgument(f"{field} must be a whole number {lo}..{hi}{what}", field=field)
    value = int(raw)
    if not lo <= value <= hi:
        raise InvalidArgument(f"{field} must be {lo}..{hi}{what} (got {value})", field=field)
    return value


def _str(raw: Any, field: str, limit: int) -> str:
    if not isinstance(raw, str) or len(raw) > limit or "\x00" in raw:
        raise InvalidArgument(f"{field} must be text of at most {limit} characters", field=field)
    return raw


def _token(raw: Any, field: str, limit: int) -> str:
    """Text that is one word: printable, no spaces (an image reference, a model name)."""
    text = _str(raw, field, limit)
    if not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidArgument(f"{field} must be printable and without spaces", field=field)
    return text


def _obj(raw: Any, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{field} must be an object", field=field)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{field} has no field {unknown[0]!r} (known: {', '.join(allowed)})",
                              field=f"{field}.{unknown[0]}")
    return raw


def check_port(raw: Any, field: str = "port") -> int:
    port = _int(raw, field, 1024, 65535)
    if port in RESERVED_PORTS:
        raise InvalidArgument(f"{field} {port} is reserved by the platform (8502-8510, 6006 and 9092); "
                              f"use 8501 (REST), 8500 (gRPC) or another port", field=field)
    return port


def check_resources(raw: Any, field: str = "resources") -> dict[str, Any]:
    r = {**DEFAULTS["resources"], **_obj(raw, field, ("cpu", "memory_gib", "gpu_type", "gpu"))}
    for k in ("cpu", "memory_gib", "gpu"):
        if isinstance(r[k], bool) or not isinstance(r[k], int | float):
            raise InvalidArgument(f"{field}.{k} must be a number", field=f"{field}.{k}")
        r[k] = float(r[k])
    r["gpu_type"] = _str(r["gpu_type"], f"{field}.gpu_type", 64)
    check_request(r["cpu"], r["memory_gib"], r["gpu_type"], r["gpu"], field=field)
    gpu = r["gpu"]
    if gpu > 0:
        tenths = round(gpu * 10)
        if abs(gpu * 10 - tenths) > 1e-6 or (gpu > 1 and abs(gpu - round(gpu)) > 1e-9):
            raise InvalidArgument(f"{field}.gpu must be 0.1..1 in steps of 0.1, or a whole number of cards",
                                  field=f"{field}.gpu")
    return r


def check_model(raw: Any) -> dict[str, Any]:
    m = _obj(raw, "model", ("kind", "model_id", "version", "path", "subdir"))
    kind = m.get("kind", "none")
    if kind == "none":
        return {"kind": "none"}
    if kind == "registry":
        model_id = _str(m.get("model_id", ""), "model.model_id", 64)
        if not model_id:
            raise InvalidArgument("model.model_id is required for a registry model (e.g. mdl-xxxxxxxx)",
                                  field="model.model_id")
        version = _int(m.get("version", 0), "model.version", 0, 1_000_000, " (0: the latest)")
        return {"kind": "registry", "model_id": model_id, "version": version,
                "subdir": _subdir(m.get("subdir", ""))}
    if kind == "path":
        # a directory on the platform storage ("/models/x" and "models/x" both name <storage>/models/x):
        # never a path of the node itself, so no source can mount the platform's own files
        path = _str(m.get("path", ""), "model.path", PATH_MAX).strip("/")
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument("model.path must be a directory on the platform storage, e.g. models/my-model "
                                  "(no '.', '..' or empty parts)", field="model.path")
        return {"kind": "path", "path": path, "subdir": _subdir(m.get("subdir", ""))}
    raise InvalidArgument("model.kind must be none, registry (a registry model version) or path (a storage path)",
                          field="model.kind")


def _subdir(raw: Any) -> str:
    sub = _str(raw, "model.subdir", PATH_MAX)
    if sub.startswith("/") or ".." in sub.split("/"):
        raise InvalidArgument("model.subdir is a relative directory (a checkpoint) inside the model, without '..'",
                              field="model.subdir")
    return sub.strip("/")


def check_argv(raw: Any, field: str) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_ARGS or not all(isinstance(a, str) for a in raw):
        raise InvalidArgument(f'{field} must be an array of at most {MAX_ARGS} strings, e.g. ["sleep", "70"]',
                              field=field)
    for a in raw:
        _str(a, field, ARG_MAX)
    return list(raw)


def check_env(raw: Any, field: str = "env") -> dict[str, str]:
    if not isinstance(raw, dict) or len(raw) > MAX_ENV:
        raise InvalidArgument(f"{field} must be an object of at most {MAX_ENV} NAME=value pairs", field=field)
    for k, v in raw.items():
        if not isinstance(k, str) or not ENV_NAME.match(k):
            raise InvalidArgument(f"{field} name {str(k)[:64]!r} must be letters, digits and '_', not starting with "
                                  "a digit", field=field)
        if k.startswith("CAPSTAN_"):
            raise InvalidArgument(f"{field} name {k} is reserved by the platform (CAPSTAN_*)", field=field)
        _str(v, f"{field}.{k}", ENV_VALUE_MAX)
    return dict(raw)


def check_sidecar(raw: Any) -> dict[str, Any] | None:
    """A second process beside each replica (SPEC 6.2 "sidecar image"): its image, its command (an
    imported image's own entrypoint when empty), env and its own CPU and memory, placed with the
    replica's. It shares the replica's network: the server reaches it as ``instance-1``."""
    if raw is None:
        return None
    s = {**SIDECAR_DEFAULTS, **_obj(raw, "sidecar", SIDECAR_FIELDS)}
    image = _token(s.get("image", ""), "sidecar.image", 256)
    if not image:
        raise InvalidArgument('sidecar.image is required: an imported image ("sha256:...", capstan image import) '
                              "or a built-in image name", field="sidecar.image")
    command = check_argv(s["command"], "sidecar.command")
    if not command and not image.startswith("sha256:"):
        raise InvalidArgument("sidecar.command is required with a built-in image (only an imported image has an "
                              "entrypoint of its own)", field="sidecar.command")
    out: dict[str, Any] = {"image": image, "command": command, "env": check_env(s["env"], "sidecar.env")}
    for k, hi in (("cpu", 64.0), ("memory_gib", 256.0)):
        v = s[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0.1 <= v <= hi):
            raise InvalidArgument(f"sidecar.{k} must be a number 0.1..{hi:g}", field=f"sidecar.{k}")
        out[k] = float(v)
    return out


def check_probe(raw: Any, field: str) -> dict[str, Any]:
    p = _obj(raw, field, ("kind", "path", "port", "command", "initial_delay_s", "period_s", "timeout_s",
                          "failure_threshold", "success_threshold"))
    kind = p.get("kind")
    if kind not in PROBE_KINDS:
        raise InvalidArgument(f"{field}.kind must be http (GET a path), tcp (the port accepts) or exec (a command)",
                              field=f"{field}.kind")
    out: dict[str, Any] = {"kind": kind, "path": "", "port": 0, "command": []}
    if kind == "http":
        path = _str(p.get("path", "/health"), f"{field}.path", PATH_MAX)
        if not path.startswith("/"):
            raise InvalidArgument(f"{field}.path must start with '/' (e.g. /health)", field=f"{field}.path")
        out["path"] = path
    if kind in ("http", "tcp") and p.get("port", 0):
        out["port"] = _int(p["port"], f"{field}.port", 1, 65535, " (0: the service's port)")
    if kind == "exec":
        out["command"] = check_argv(p.get("command"), f"{field}.command")
        if not out["command"]:
            raise InvalidArgument(f"{field}.command must name a program for an exec probe", field=f"{field}.command")
    out["initial_delay_s"] = _int(p.get("initial_delay_s", 0), f"{field}.initial_delay_s", 0, 3600)
    out["period_s"] = _int(p.get("period_s", 10), f"{field}.period_s", 1, 3600)
    out["timeout_s"] = _int(p.get("timeout_s", 1), f"{field}.timeout_s", 1, 600)
    out["failure_threshold"] = _int(p.get("failure_threshold", 3), f"{field}.failure_threshold", 1, 100)
    out["success_threshold"] = _int(p.get("success_threshold", 1), f"{field}.success_threshold", 1, 100)
    return out


def check_rate_limit(raw: Any) -> dict[str, Any]:
    r = {**DEFAULTS["rate_limit"], **_obj(raw, "rate_limit", ("kind", "value", "queue_size", "queue_timeout_ms"))}
    if r["kind"] not in RATE_LIMITS:
        raise InvalidArgument("rate_limit.kind must be none (the group's cap of 500 QPS), qps (per replica) or "
                              "concurrency (per replica)", field="rate_limit.kind")
    if r["kind"] == "none":
        return dict(DEFAULTS["rate_limit"])
    hi = GROUP_QPS_CAP if r["kind"] == "qps" else 10_000
    return {
        "kind": r["kind"],
        "value": _int(r["value"], "rate_limit.value", 1, hi),
        "queue_size": _int(r["queue_size"], "rate_limit.queue_size", 0, MAX_QUEUE),
        "queue_timeout_ms": _int(r["queue_timeout_ms"], "rate_limit.queue_timeout_ms", 0, MAX_QUEUE_TIMEOUT_MS),
    }


def normalize(raw: Any, *, deployment_mode: str = "standard", region: str = regions.DEFAULT) -> dict[str, Any]:
    """The complete, valid spec for ``raw`` (a version's form) in an install of ``region``;
    ``InvalidArgument`` names what is wrong."""
    raw = _obj(raw, "spec", FIELDS)
    s = {**DEFAULTS, **raw}
    out: dict[str, Any] = {}
    if s["runtime"] not in RUNTIMES:
        raise InvalidArgument('runtime must be "transformers", "vllm", "generic" or "custom" (your own command)',
                              field="runtime")
    out["runtime"] = s["runtime"]
    out["command"] = _str(s["command"], "command", COMMAND_MAX)
    if out["runtime"] == "custom" and not out["command"].strip():
        raise InvalidArgument("command is required with the custom runtime: the command that serves HTTP on port",
                              field="command")
    if out["runtime"] != "custom" and out["command"]:
        raise InvalidArgument(f"command is only for the custom runtime; the {out['runtime']} runtime builds its own",
                              field="command")
    out["image"] = _token(s["image"], "image", 256)
    out["model"] = check_model(s["model"])
    if out["runtime"] in ("transformers", "vllm", "generic") and out["model"]["kind"] == "none":
        raise InvalidArgument(f"model is required with the {out['runtime']} runtime: a registry model version "
                              '({"kind": "registry", "model_id": ..., "version": N}) or a storage path '
                              '({"kind": "path", "path": ...})', field="model")
    if not isinstance(s["grpc"], bool):
        raise InvalidArgument("grpc must be true or false", field="grpc")
    out["grpc"] = s["grpc"]
    out["port"] = check_port(raw.get("port", DEFAULT_GRPC_PORT if out["grpc"] else DEFAULT_PORT))
    out["resources"] = check_resources(s["resources"])
    if out["runtime"] in GPU_RUNTIMES and out["resources"]["gpu"] <= 0:
        raise InvalidArgument(f"the built-in {out['runtime']} runtime needs a GPU: set resources.gpu > 0",
                              field="resources.gpu")
    if deployment_mode == "standard":
        if s["instances"] != 1:
            raise InvalidArgument("instances (per replica) is 1 in standard deployment; multi-instance "
                                  "deployment is chosen when the service is created", field="instances")
        out["instances"] = 1
    else:
        out["instances"] = _int(s["instances"], "instances", 2, MAX_INSTANCES, " in multi-instance deployment")
    out["env"] = check_env(s["env"])
    if out["runtime"] != "custom":  # the runtime's own settings (e.g. vLLM's SPEC §6.6 env vars) refused now
        try:
            build_argv(out["runtime"], port=out["port"], served_model_name="m", env=out["env"])
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="env") from exc
    probes = _obj(s["probes"], "probes", PROBE_NAMES)
    out["probes"] = {name: check_probe(p, f"probes.{name}") for name, p in sorted(probes.items()) if p}
    if "readiness" not in out["probes"]:  # traffic only goes to ready instances: every replica has a readiness probe
        default = {"kind": "tcp"} if out["runtime"] == "custom" else {"kind": "http", "path": "/health"}
        out["probes"]["readiness"] = check_probe({**default, "period_s": 2}, "probes.readiness")
    out["grace_period_s"] = _int(s["grace_period_s"], "grace_period_s", 1, MAX_GRACE_S, " seconds")
    out["pre_stop"] = check_argv(s["pre_stop"], "pre_stop")
    out["deploy_retries"] = _int(s["deploy_retries"], "deploy_retries", 0, MAX_DEPLOY_RETRIES, " (0: unlimited)")
    out["replicas"] = _int(s["replicas"], "replicas", 1, MAX_REPLICAS)
    out["max_surge_pct"] = _int(s["max_surge_pct"], "max_surge_pct", 0, 100, " percent")
    out["max_unavailable_pct"] = _int(s["max_unavailable_pct"], "max_unavailable_pct", 0, 100, " percent")
    out["rate_limit"] = check_rate_limit(s["rate_limit"])
    out["served_model_name"] = _token(s["served_model_name"], "served_model_name", 128)
    out["resource_group_id"] = _str(s["resource_group_id"], "resource_group_id", 64)
    if not out["resource_group_id"]:
        raise InvalidArgument("resource_group_id is required: the resource group whose nodes run the replicas",
                              field="resource_group_id")
    out["description"] = check_description(s["description"])
    out["sidecar"] = check_sidecar(s["sidecar"])
    out["region"] = regions.check(s["region"], region)  # this install's (SPEC §0: one region per install)
    if out["sidecar"] is not None and out["instances"] > 1:
        raise InvalidArgument("a sidecar is for standard deployment (one instance per replica)", field="sidecar")
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [k for k in FIELDS if old.get(k) != new.get(k)]


def group_qps(spec: dict[str, Any], replicas: int) -> int:
    """A version's QPS limit: per-replica QPS x replicas, never over the group's cap."""
    if spec["rate_limit"]["kind"] != "qps":
        return GROUP_QPS_CAP
    return min(GROUP_QPS_CAP, spec["rate_limit"]["value"] * max(replicas, 0))

