"""Model files in platform storage, kept by content: ``<storage>/registry/blobs/sha256/<ab>/<digest>``.

A file is stored once however many versions hold it; a version is a list of (path, digest, size).
``materialize`` lays a version out as a directory (hard links to the blobs where the file system
allows, else copies) under ``<storage>/registry/sources/<model>/<version>``: the model source an
online service mounts read-only. Files are read from task output through ``safefs`` only, so a link a
task left in ``/opt/ml/model`` is never followed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from capstan_agentkit import safefs
from capstan_core.contracts.registry import ModelFileEntry

CHUNK = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class BlobStore:
    def __init__(self, storage: Path) -> None:
        self.root = Path(storage).resolve() / "registry"
        self.blobs = self.root / "blobs" / "sha256"
        self.sources = self.root / "sources"

    def blob(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blobs / digest[:2] / digest

    def put(self, stream: BinaryIO) -> tuple[str, int]:
        """Store what ``stream`` holds; its (sha256, size). Storing the same content again is free."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs / f".incoming.{os.getpid()}.{id(stream)}"
        h, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            digest = h.hexdigest()
            dest = self.blob(digest)
            dest.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def put_tree(self, root: Path) -> list[ModelFileEntry]:
        """Every regular file under ``root`` (links and special files left out), stored; their entries."""
        out = []
        for entry in safefs.list_tree(root):
            if entry.kind != "file":
                continue
            with safefs.open_file(root, entry.path) as f:
                digest, size = self.put(f)
            out.append(ModelFileEntry(path=entry.path, sha256=digest, size=size))
        return out

    def read(self, digest: str, offset: int, limit: int) -> tuple[bytes, int]:
        path = self.blob(digest)
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(limit), path.stat().st_size

    def source_dir(self, model_id: str, version: int) -> Path:
        if not _ID.match(model_id) or version < 1:
            raise ValueError(f"invalid model source {model_id!r} v{version}")
        return self.sources / model_id / str(version)

    def materialize(self, model_id: str, version: int, files: Iterable[ModelFileEntry]) -> Path:
        """The version as a directory of its files (made once; read-only)."""
        dest = self.source_dir(model_id, version)
        if (dest / ".complete").exists():
            return dest
        tmp = dest.parent / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            target = (tmp / f.path).resolve()
            if not target.is_relative_to(tmp.resolve()):
                raise ValueError(f"file path leaves the model directory: {f.path!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.blob(f.sha256), target)
            except OSError:
                shutil.copyfile(self.blob(f.sha256), target)
        (tmp / ".complete").write_text("")
        for d, _, _ in os.walk(tmp):  # an online service's sandbox uid reads it (files are 0444 blobs)
            os.chmod(d, 0o755)  # noqa: S103 - model files, nothing secret
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest

    def forget_source(self, model_id: str, version: int | None = None) -> None:
        d = self.sources / model_id if version is None else self.source_dir(model_id, version)
        shutil.rmtree(d, ignore_errors=True)

    def collect(self, referenced: set[str]) -> int:
        """Remove blobs no version refers to; how many. The caller holds the store's write lock."""
        removed = 0
        if not self.blobs.is_dir():
            return 0
        for sub in self.blobs.iterdir():
            if not sub.is_dir():
                continue
            for blob in sub.iterdir():
                if blob.name not in referenced and _DIGEST.match(blob.name):
                    blob.unlink(missing_ok=True)
                    removed += 1
        return removed
