"""A task's inputs, made ready on the node before an instance starts, and its outputs uploaded after.

:func:`prepare` turns the task's storage rows into sandbox mounts (``sandbox.Mount``):

- ``fs``: the operator's volume, the row's path inside it resolved and confined to the volume's root
  (a link leading out of it is refused), bound live (read-only for ``readonly`` rows, read-only
  volumes and built-in models);
- ``object``: the prefix downloaded into ``<instance dir>/inputs/<n>`` (a ``training_output`` row
  starts empty and is uploaded back), bound read-write and owned by the instance's uid;
- ``git``: cloned into ``<instance dir>/inputs/<n>`` (depth 1, the row's branch), credentials through
  ``GIT_ASKPASS`` from the environment, never in an argv, a URL or a log line;
- the code package: downloaded into ``/opt/ml/code``.

What to upload is written to ``uploads.json`` in the instance directory, so a restarted agent still
knows: :func:`upload` copies ``/opt/ml/output`` (while it runs and at the end), ``/opt/ml/model``
(at the end) to the task's output location, and each ``training_output`` row back to its source.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan_agentkit.sandbox.spec import Mount

from ..domain.form import split_location
from ..objectstore import open_store
from ..storage_backends import StorageConfig

UPLOADS_FILE = "uploads.json"
_GIT_TIMEOUT_S = 600
_ASKPASS = Path(__file__).resolve().parent / "git_askpass.sh"


class InputError(Exception):
    """A storage row could not be made ready: the instance fails with this message."""


def prepare(task: Any, instance_dir: Path, config: StorageConfig, log: Callable[[str], None]) -> list[Mount]:
    """Make the task's inputs ready for one instance; the mounts its sandbox needs."""
    mounts: list[Mount] = []
    uploads: list[dict[str, str]] = []
    inputs = instance_dir / "inputs"
    for i, row in enumerate(task.storage):
        where = f"storage row {i} ({row.kind} {row.path})"
        try:
            if row.kind == "fs":
                mounts.append(_volume(row, config))
                continue
            dest = inputs / str(i)
            dest.mkdir(parents=True, exist_ok=True)
            if row.kind == "object":
                store, prefix = split_location(row.source, "source")
                if row.purpose == "training_output":
                    uploads.append({"from": str(dest), "to": row.source, "when": "always"})
                else:
                    n = open_store(config.object_stores[store]).download(prefix, dest)
                    log(f"{where}: downloaded {n} file(s) from {store}:{prefix}")
            else:
                _clone(row, dest, config)
                log(f"{where}: cloned {row.source}" + (f" ({row.branch})" if row.branch else ""))
            mounts.append(Mount(str(dest), row.path, readonly=row.readonly, own=True))
        except InputError as e:
            raise InputError(f"{where}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a store that fails says why, once, in the instance's failure
            raise InputError(f"{where}: {type(e).__name__}: {e}") from e
    if task.code:
        store, prefix = split_location(task.code, "code")
        try:
            n = open_store(config.object_stores[store]).download(prefix, instance_dir / "code")
        except Exception as e:  # noqa: BLE001
            raise InputError(f"code package {task.code}: {type(e).__name__}: {e}") from e
        log(f"code package: {n} file(s) from {task.code} into /opt/ml/code")
    if task.output:
        store, prefix = split_location(task.output, "output")
        base = f"{store}:{prefix}/{task.id}/{instance_dir.name.rsplit('-', 1)[-1]}"
        uploads.append({"from": str(instance_dir / "output"), "to": f"{base}/output", "when": "always"})
        uploads.append({"from": str(instance_dir / "model"), "to": f"{base}/model", "when": "final"})
    (instance_dir / UPLOADS_FILE).write_text(json.dumps(uploads))
    return mounts


def upload(instance_dir: Path, config: StorageConfig, *, final: bool) -> int:
    """Upload what :func:`prepare` listed (``final``: the model too); files uploaded."""
    try:
        plan = json.loads((instance_dir / UPLOADS_FILE).read_text())
    except FileNotFoundError:
        return 0
    n = 0
    for item in plan:
        if item["when"] == "final" and not final:
            continue
        store, prefix = split_location(item["to"], "output")
        n += open_store(config.object_stores[store]).upload(Path(item["from"]), prefix)
    return n


def _volume(row: Any, config: StorageConfig) -> Mount:
    name, rel = split_location(row.source, "source")
    vol = config.volumes.get(name)
    if vol is None:
        raise InputError(f"file-system volume {name!r} is not configured on this node")
    root = Path(vol.root).resolve()
    source = (root / rel).resolve()
    if not source.is_relative_to(root):
        raise InputError(f"{row.source} leads out of volume {name}")
    if not source.exists():
        raise InputError(f"{row.source} does not exist")
    readonly = row.readonly or vol.readonly or row.purpose == "builtin_model"
    return Mount(str(source), row.path, readonly=readonly)


def _clone(row: Any, dest: Path, config: StorageConfig) -> None:
    url = row.source
    if url.startswith("file://") or url.startswith("/"):
        local = Path(url.removeprefix("file://")).resolve()
        if not any(local.is_relative_to(Path(r).resolve()) for r in config.git_roots):
            raise InputError("a local repository may be cloned only from the operator's git_roots")
        url = str(local)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0", "HOME": str(dest.parent),
           "GIT_CONFIG_NOSYSTEM": "1"}
    if row.credential:
        cred = config.git_credentials.get(row.credential)
        if cred is None:
            raise InputError(f"git credential {row.credential!r} is not configured on this node")
        env |= {"GIT_ASKPASS": str(_ASKPASS), "CAPSTAN_GIT_USERNAME": cred.username,
                "CAPSTAN_GIT_PASSWORD": cred.password}
    argv = ["git", "-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null", "clone", "--depth", "1",
            "--no-recurse-submodules"]
    if row.branch:
        argv += ["--branch", row.branch]
    argv += ["--", url, str(dest)]
    if dest.exists() and not any(dest.iterdir()):
        dest.rmdir()
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S)
    if run.returncode != 0:
        err = run.stderr.strip().splitlines()[-1:] or ["git clone failed"]
        message = err[0]
        if row.credential and (cred := config.git_credentials.get(row.credential)) and cred.password:
            message = message.replace(cred.password, "***")
        raise InputError(message)
