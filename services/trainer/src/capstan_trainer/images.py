"""Training images (SPEC §3.1, §3.6): the root filesystem an instance's sandbox uses as ``/``.

- **Built-in** images: ``capstan/python-ml`` is the host's own system with the platform's Python and
  its ML stack (what the agent's Python has installed: PyTorch, Ray, OpenMPI's ``mpirun`` ...), every
  mode; the catalog lists its frameworks, modes and libraries as found on this install.
- **Imported** images: an OCI image archive (``docker save`` or ``skopeo copy ... oci-archive:``
  tarball) unpacked once into ``<storage>/images/<digest>/rootfs`` (the digest of the image's config,
  its image id), layers applied in order with their whiteouts; a task names it ``sha256:<digest>``.
  Members that would leave the root (absolute, ``..``, a link on the way) and device nodes are
  skipped, set-uid bits dropped. Pulling from a registry needs a reachable registry and is not built.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from capstan_agentkit.images import image_rootfs

DEFAULT_IMAGE = "capstan/python-ml"
ALL_MODES = ("DDP", "MPI", "Horovod", "PS-Worker", "Ray")
_LIBRARIES = ("torch", "ray", "transformers", "peft", "numpy", "tensorboard", "mpi4py", "horovod", "tensorflow")


@dataclass(frozen=True)
class Image:
    name: str  # capstan/python-ml, or sha256:<digest>
    kind: str  # builtin | imported
    description: str
    frameworks: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    libraries: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0


def builtin_images() -> list[Image]:
    libs = {}
    for name in _LIBRARIES:
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    frameworks = [f"PyTorch {libs['torch']}"] if "torch" in libs else []
    if shutil.which("mpirun"):
        libs["openmpi"] = "system"
    return [Image(DEFAULT_IMAGE, "builtin", "the host's system and the platform's Python with its ML stack",
                  frameworks, list(ALL_MODES), libs)]


class ImageStore:
    """Imported images under ``<storage>/images/<hex digest>/``: ``rootfs/`` and ``image.json``."""

    def __init__(self, storage_root: Path) -> None:
        self.root = Path(storage_root) / "images"

    def rootfs(self, name: str) -> Path | None:
        """The root filesystem of image ``name`` ("" and built-in names: None, the host's own)."""
        return image_rootfs(self.root.parent, name)

    def exists(self, name: str) -> bool:
        try:
            return self.rootfs(name) is not None
        except (ValueError, FileNotFoundError):
            return False

    def list(self) -> list[Image]:
        out = []
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                try:
                    meta = json.loads((d / "image.json").read_text())
                except (OSError, ValueError):
                    continue
                out.append(Image(f"sha256:{d.name}", "imported", meta.get("source", ""), [], list(ALL_MODES),
                                 {}, int(meta.get("size_bytes", 0))))
        return out

    def import_archive(self, archive: Path) -> str:
        """Unpack an OCI image archive (cached: an image already imported is not unpacked again)."""
        with tarfile.open(archive) as outer:
            config, layers = _manifest(outer)
            digest = hashlib.sha256(config).hexdigest()
            final = self.root / digest
            if (final / "image.json").exists():
                return f"sha256:{digest}"
            tmp = self.root / f".{digest}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            rootfs = tmp / "rootfs"
            rootfs.mkdir(parents=True)
            old_umask = os.umask(0o022)  # directories a layer implies are readable by the instances
            try:
                for layer in layers:
                    with _member(outer, layer) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
                        _apply_layer(tar, rootfs)
            finally:
                os.umask(old_umask)
        size = sum(e.stat(follow_symlinks=False).st_size for e in rootfs.rglob("*"))
        (tmp / "image.json").write_text(json.dumps({"source": archive.name, "size_bytes": size, **_run_config(config)}))
        os.chmod(tmp, 0o755)  # noqa: S103 - an image is readable by every instance that uses it
        os.chmod(rootfs, 0o755)  # noqa: S103
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return f"sha256:{digest}"


def _run_config(config: bytes) -> dict[str, list[str]]:
    """What the image runs by default (its OCI config's Entrypoint and Cmd; lists of strings or nothing)."""
    try:
        cfg = json.loads(config).get("config") or {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for key, name in (("Entrypoint", "entrypoint"), ("Cmd", "cmd")):
        value = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            out[name] = value
    return out


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    f = tar.extractfile(name.lstrip("./") if name.lstrip("./") in tar.getnames() else name)
    if f is None:
        raise ValueError(f"{name} is not a file of the archive")
    return f


def _manifest(tar: tarfile.TarFile) -> tuple[bytes, list[str]]:
    """(config bytes, layer member names) of a docker-save or an OCI-layout archive."""
    names = set(tar.getnames())
    if "manifest.json" in names:  # docker save
        manifest = json.loads(_member(tar, "manifest.json").read())[0]
        return _member(tar, manifest["Config"]).read(), list(manifest["Layers"])
    if "index.json" in names:  # OCI image layout
        index = json.loads(_member(tar, "index.json").read())
        desc = index["manifests"][0]
        manifest = json.loads(_member(tar, _blob(desc["digest"])).read())
        if "manifests" in manifest:  # an index of platforms: the first
            manifest = json.loads(_member(tar, _blob(manifest["manifests"][0]["digest"])).read())
        return (_member(tar, _blob(manifest["config"]["digest"])).read(),
                [_blob(layer["digest"]) for layer in manifest["layers"]])
    raise ValueError("not an OCI image archive: no manifest.json (docker save) or index.json (OCI layout)")


def _blob(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    return f"blobs/{algo}/{hexd}"


def _apply_layer(tar: tarfile.TarFile, rootfs: Path) -> None:
    for m in tar.getmembers():
        parts = [p for p in PurePosixPath(m.name).parts if p not in ("/", ".")]
        if not parts or ".." in parts:
            continue  # never outside the root
        rel = PurePosixPath(*parts)
        parent = rootfs.joinpath(*rel.parts[:-1])
        if not _inside(rootfs, parent):
            continue  # a link on the way would lead out of the root
        base = rel.parts[-1]
        if base == ".wh..wh..opq":  # opaque directory: what lower layers put there goes
            for child in parent.iterdir() if parent.is_dir() else []:
                _remove(child)
            continue
        if base.startswith(".wh."):
            _remove(parent / base.removeprefix(".wh."))
            continue
        target = parent / base
        parent.mkdir(parents=True, exist_ok=True)
        if m.isdir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                _remove(target)
            target.mkdir(exist_ok=True)
            os.chmod(target, (m.mode & 0o777) | 0o500)
        elif m.issym():
            _remove(target)
            os.symlink(m.linkname, target)
        elif m.islnk():
            src = rootfs.joinpath(*PurePosixPath(m.linkname.lstrip("/")).parts)
            if _inside(rootfs, src.parent) and src.is_file() and not src.is_symlink():
                _remove(target)
                os.link(src, target)
        elif m.isfile():
            _remove(target)
            f = tar.extractfile(m)
            with open(target, "wb") as out:
                shutil.copyfileobj(f or io.BytesIO(), out)
            os.chmod(target, m.mode & 0o777 & ~(stat.S_ISUID | stat.S_ISGID))
        # devices, FIFOs: not created (the sandbox has its own /dev)


def _inside(root: Path, path: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
