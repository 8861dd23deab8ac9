"""Object storage backends: a local directory (the embedded default) and any S3-compatible store.

Both copy a *prefix* (a directory of keys) to and from a local directory. Keys become relative paths
confined to the destination: a key with ``..``, an absolute key or one with empty parts is refused,
never written. Uploads read through :mod:`capstan_agentkit.safefs` (regular files only, links never followed), so
a task cannot make the agent (root) upload a host file by leaving a link in its output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from capstan_agentkit.safefs import list_tree, mirror, open_file

from .storage_backends import ObjectStoreConfig

_CHUNK = 1 << 20


class ObjectStore(Protocol):
    def download(self, bucket_prefix: str, dest: Path) -> int:
        """Copy every object under ``bucket/prefix`` into ``dest``; how many files."""

    def upload(self, src: Path, bucket_prefix: str) -> int:
        """Copy every regular file under ``src`` to ``bucket/prefix/<relative path>``; how many."""


def open_store(config: ObjectStoreConfig) -> ObjectStore:
    if config.kind == "s3":
        return S3Store(config)
    return LocalStore(Path(config.root))


def safe_key_path(key: str) -> str:
    """A key as a relative path, or ValueError if it would leave the destination."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ValueError(f"object key {key!r} is not a plain relative path")
    return key


class LocalStore:
    """``<root>/<bucket>/<prefix>``: a directory tree (a shared mount across machines)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, bucket_prefix: str) -> Path:
        if not bucket_prefix or any(p in ("..",) for p in bucket_prefix.split("/")):
            raise ValueError(f"not a bucket/prefix: {bucket_prefix!r}")
        return self.root / bucket_prefix

    def download(self, bucket_prefix: str, dest: Path) -> int:
        mirror(self._dir(bucket_prefix), dest)  # links in the store are never followed either
        return sum(1 for e in list_tree(dest) if e.kind == "file")

    def upload(self, src: Path, bucket_prefix: str) -> int:
        target = self._dir(bucket_prefix)
        target.mkdir(parents=True, exist_ok=True)
        mirror(src, target)
        return sum(1 for e in list_tree(target) if e.kind == "file")


class S3Store:
    """An S3-compatible store through boto3 (path-style addressing, so any endpoint works)."""

    def __init__(self, config: ObjectStoreConfig) -> None:
        import boto3  # imported here: only nodes that use S3 need it
        from botocore.config import Config

        self.client: Any = boto3.client(
            "s3", endpoint_url=config.endpoint or None, region_name=config.region,
            aws_access_key_id=config.access_key_id or None, aws_secret_access_key=config.secret_access_key or None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    @staticmethod
    def _split(bucket_prefix: str) -> tuple[str, str]:
        bucket, _, prefix = bucket_prefix.partition("/")
        if not bucket:
            raise ValueError(f"not a bucket/prefix: {bucket_prefix!r}")
        return bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def download(self, bucket_prefix: str, dest: Path) -> int:
        bucket, prefix = self._split(bucket_prefix)
        dest.mkdir(parents=True, exist_ok=True)
        n = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a "directory" marker
                rel = safe_key_path(key[len(prefix):])
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
                tmp = target.with_name(f".capstan-dl-{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    while chunk := body.read(_CHUNK):
                        f.write(chunk)
                os.replace(tmp, target)
                n += 1
        return n

    def upload(self, src: Path, bucket_prefix: str) -> int:
        bucket, prefix = self._split(bucket_prefix)
        n = 0
        for entry in list_tree(src):
            if entry.kind != "file":
                continue
            try:
                f = open_file(src, entry.path)
            except (PermissionError, FileNotFoundError):
                continue  # swapped for a link or removed since the listing
            with f:
                self.client.upload_fileobj(f, bucket, f"{prefix}{entry.path}")
            n += 1
        return n
