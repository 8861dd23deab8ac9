"""The operator's storage backends, named by a task's storage rows (SPEC §0 "Storage", §3.1).

One JSON file (``CAPSTAN_STORAGE_CONFIG``, default ``<data-dir>/storage.json``, mode 0600: it holds
credentials), read by the trainer (to refuse a row naming nothing) and by every agent (to serve it)::

    {
      "object_stores": {"s3": {"kind": "s3", "endpoint": "http://10.0.0.5:9000", "region": "us-east-1",
                               "access_key_id": "...", "secret_access_key": "..."},
                        "archive": {"kind": "local", "root": "/srv/objects"}},
      "volumes": {"cfs": {"root": "/mnt/cfs"}},
      "git_credentials": {"ci-bot": {"username": "bot", "password": "<token>"}},
      "git_roots": ["/srv/git"]
    }

Always there, whatever the file says: the object store ``local`` (a local directory, ``<storage>/objects``,
the embedded default) and the read-only volume ``platform`` (``<storage>/builtin``: the platform's
built-in models, code and sample data, e.g. ``platform:models/tiny-gpt``). A local repository may be
cloned only from under ``git_roots`` (none by default): a task must not read the host's other repositories.
Credentials are never logged, never put in an argv or a URL, never returned by any API.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_STORE = "local"
PLATFORM_VOLUME = "platform"


@dataclass(frozen=True)
class ObjectStoreConfig:
    name: str
    kind: str  # "local" | "s3"
    root: str = ""  # local
    endpoint: str = ""  # s3: an S3-compatible endpoint URL (empty: AWS)
    region: str = "us-east-1"
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class VolumeConfig:
    name: str
    root: str
    readonly: bool = False  # every bind of it is read-only


@dataclass(frozen=True)
class GitCredential:
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class StorageConfig:
    object_stores: dict[str, ObjectStoreConfig]
    volumes: dict[str, VolumeConfig]
    git_credentials: dict[str, GitCredential] = field(default_factory=dict, repr=False)
    git_roots: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path | None, storage_root: Path) -> StorageConfig:
        data: dict[str, Any] = {}
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{path}: the storage configuration must be a JSON object")
        return cls.parse(data, storage_root)

    @classmethod
    def parse(cls, data: dict[str, Any], storage_root: Path) -> StorageConfig:
        root = Path(storage_root)
        stores = {LOCAL_STORE: ObjectStoreConfig(LOCAL_STORE, "local", root=str(root / "objects"))}
        for name, c in (data.get("object_stores") or {}).items():
            kind = str(c.get("kind", "local"))
            if kind not in ("local", "s3"):
                raise ValueError(f"object store {name}: kind must be local or s3")
            stores[name] = ObjectStoreConfig(
                name, kind, root=str(c.get("root", "")), endpoint=str(c.get("endpoint", "")),
                region=str(c.get("region", "us-east-1")), access_key_id=str(c.get("access_key_id", "")),
                secret_access_key=str(c.get("secret_access_key", "")),
            )
        volumes = {PLATFORM_VOLUME: VolumeConfig(PLATFORM_VOLUME, str(root / "builtin"), readonly=True)}
        for name, c in (data.get("volumes") or {}).items():
            if name == PLATFORM_VOLUME:
                raise ValueError(f"volume {PLATFORM_VOLUME} is the platform's own")
            volumes[name] = VolumeConfig(name, str(c["root"]), readonly=bool(c.get("readonly", False)))
        creds = {name: GitCredential(str(c.get("username", "")), str(c.get("password", "")))
                 for name, c in (data.get("git_credentials") or {}).items()}
        return cls(stores, volumes, creds, tuple(str(p) for p in data.get("git_roots") or ()))

    def check_names(self, *, stores: list[str], volumes: list[str], credentials: list[str]) -> str | None:
        """What a task names that this install does not have (None: everything exists)."""
        for s in stores:
            if s not in self.object_stores:
                return f"object store {s!r} is not configured (there are: {', '.join(sorted(self.object_stores))})"
        for v in volumes:
            if v not in self.volumes:
                return f"file-system volume {v!r} is not configured (there are: {', '.join(sorted(self.volumes))})"
        for c in credentials:
            if c not in self.git_credentials:
                return f"git credential {c!r} is not configured"
        return None


def write_config(path: Path, data: dict[str, Any]) -> None:
    """Write a storage configuration readable by root only (it holds credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
