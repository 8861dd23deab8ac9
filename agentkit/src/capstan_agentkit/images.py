"""Where an instance's image lives on a node: imported images are unpacked once into
``<storage>/images/<hex digest>/`` (``rootfs/`` and ``image.json``, written by the trainer's
``capstan image import``); an instance names one ``sha256:<digest>``. Built-in names are the host's system."""

from __future__ import annotations

import json
from pathlib import Path


def image_rootfs(storage_root: Path, name: str) -> Path | None:
    """The root filesystem of image ``name`` ("" and built-in names: None, the host's own). Raises
    ValueError for a malformed digest, FileNotFoundError for an image not imported on this install."""
    if not name.startswith("sha256:"):
        return None
    hexd = name.removeprefix("sha256:")
    if len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise ValueError(f"not an image digest: {name}")
    root = Path(storage_root) / "images" / hexd
    if not (root / "image.json").exists():
        raise FileNotFoundError(f"image {name} has not been imported on this install (capstan image import)")
    return root / "rootfs"


def image_command(storage_root: Path, name: str) -> list[str]:
    """What an imported image runs by default (its entrypoint, then its command); [] when it names
    nothing or is not an imported image."""
    if image_rootfs(storage_root, name) is None:
        return []
    try:
        meta = json.loads((Path(storage_root) / "images" / name.removeprefix("sha256:") / "image.json").read_text())
    except (OSError, ValueError):
        return []
    return [*meta.get("entrypoint", []), *meta.get("cmd", [])]
