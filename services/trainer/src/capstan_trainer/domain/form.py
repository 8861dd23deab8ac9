"""The training-task form (SPEC §3.1): every field a user fills in, validated with a message naming the
field. Pure: what exists outside the task (groups, stores, volumes, images) is checked by the app."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from capstan_core.contracts.training import STORAGE_PURPOSES, TRAINING_MODES, StorageRow, TrainingTaskSubmitted
from capstan_core.errors import InvalidArgument

from .roles import normalized_roles

DESCRIPTION_MAX = 500
MAX_STORAGE_ROWS = 32
SOURCE_MAX = 1024
_LOCATION = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_-]{0,63}):(?P<path>[^\x00]*)$")
_IMAGE = re.compile(r"^(sha256:[0-9a-f]{64}|[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,64})?)$")
# Where a storage row may be mounted: under these roots, and never over the platform's own directories
# (a row may go *inside* them: /opt/ml/input/data/train, /opt/ml/output/data).
MOUNT_ROOTS = ("/opt/ml/", "/mnt/", "/data/", "/home/", "/workspace/")
RESERVED_PATHS = ("/opt/ml", "/opt/ml/input", "/opt/ml/input/config", "/opt/ml/code", "/opt/ml/output",
                  "/opt/ml/model", "/opt/ml/input/config/hyperparameters.json")
_GIT_URL = re.compile(r"^(https?|ssh|git|file)://[^\s]+$|^/[^\s]+$")


def split_location(value: str, field: str) -> tuple[str, str]:
    """``<name>:<path>`` -> (name, path), the path relative and confined (no ``..``, no leading ``/``)."""
    m = _LOCATION.match(value)
    if not m:
        raise InvalidArgument(f"{field} must be <name>:<path>, e.g. local:bucket/prefix (got {value!r})", field=field)
    return m["name"], relative_path(m["path"], field)


def relative_path(path: str, field: str) -> str:
    """A user path confined to its root: normalised, relative, never climbing out with ``..``."""
    if len(path) > SOURCE_MAX or "\x00" in path or "\\" in path:
        raise InvalidArgument(f"{field}: a path of at most {SOURCE_MAX} characters", field=field)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidArgument(f"{field} must stay inside its root: '..' is not allowed", field=field)
    return "/".join(parts)


def container_path(path: str, field: str) -> str:
    norm = posixpath.normpath(path) if path else ""
    if not path.startswith("/") or norm != path.rstrip("/") or ".." in path.split("/"):
        raise InvalidArgument(f"{field} must be a normalised absolute path, e.g. /opt/ml/input/data/train", field=field)
    if norm in RESERVED_PATHS or not any(norm.startswith(r) for r in MOUNT_ROOTS):
        raise InvalidArgument(
            f"{field} must lie under {', '.join(r.rstrip('/') for r in MOUNT_ROOTS)} and not be one of the "
            f"platform's own directories ({', '.join(RESERVED_PATHS[:6])})", field=field,
        )
    return norm


def validate_row(row: StorageRow, i: int) -> None:
    f = f"storage[{i}]"
    if row.purpose not in STORAGE_PURPOSES:
        raise InvalidArgument(f"{f}.purpose must be one of {', '.join(STORAGE_PURPOSES)}", field=f"{f}.purpose")
    container_path(row.path, f"{f}.path")
    if row.kind == "git":
        if len(row.source) > SOURCE_MAX or not _GIT_URL.match(row.source):
            raise InvalidArgument(f"{f}.source must be a repository URL (https://, ssh://, git://, file://)",
                                  field=f"{f}.source")
        if re.match(r"^[a-z]+://[^/]*@", row.source):
            raise InvalidArgument(
                f"{f}.source must not carry credentials; name a credential the operator holds in {f}.credential",
                field=f"{f}.source",
            )
        if row.branch and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$", row.branch):
            raise InvalidArgument(f"{f}.branch is not a branch name", field=f"{f}.branch")
        return
    if row.branch or row.credential:
        raise InvalidArgument(f"{f}: branch and credential are for git rows only", field=f"{f}.kind")
    split_location(row.source, f"{f}.source")
    if row.purpose == "builtin_model" and row.kind != "fs":
        raise InvalidArgument(f"{f}: the platform's built-in models are file-system rows", field=f"{f}.kind")


def validate_form(
    *, description: str, image: str, mode: str, roles: dict[str, int], instance_count: int,
    storage: list[StorageRow], code: str, output: str,
) -> dict[str, int]:
    """Everything but the fields the domain checked before (#7); the roles, normalised."""
    if len(description) > DESCRIPTION_MAX:
        raise InvalidArgument(f"description must be at most {DESCRIPTION_MAX} characters", field="description")
    if image and not _IMAGE.match(image):
        raise InvalidArgument("image must be a built-in image's name or sha256:<digest> of an imported one",
                              field="image")
    if mode not in TRAINING_MODES:
        raise InvalidArgument(f"mode must be one of {', '.join(m for m in TRAINING_MODES if m)} (or empty)",
                              field="mode")
    if len(storage) > MAX_STORAGE_ROWS:
        raise InvalidArgument(f"at most {MAX_STORAGE_ROWS} storage rows", field="storage")
    for i, row in enumerate(storage):
        validate_row(row, i)
    paths = [r.path.rstrip("/") for r in storage]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("two storage rows mount at the same path", field="storage")
    if code:
        split_location(code, "code")
    if output:
        split_location(output, "output")
    return normalized_roles(mode, roles, instance_count)


def form_of(e: TrainingTaskSubmitted) -> dict[str, Any]:
    """The fields of the form that the read model keeps as one JSON object."""
    return {"description": e.description, "image": e.image, "mode": e.mode, "roles": e.roles,
            "role_order": list(e.roles), "storage": [r.model_dump() for r in e.storage], "code": e.code,
            "output": e.output, "source_task_id": e.source_task_id}
