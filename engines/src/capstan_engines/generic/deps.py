"""A model directory's ``requirements.txt``, installed at start with pip into a writable directory (the model
is mounted read-only) that is then put first on ``sys.path``. Installed once per requirements content."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path


class DepsError(Exception):
    """The requirements could not be installed; the message says why (pip's own words included)."""


def default_dir() -> Path:
    return Path(os.environ.get("CAPSTAN_DEPS_DIR") or Path(tempfile.gettempdir()) / "capstan-generic-deps")


def install(requirements: Path, root: Path, timeout: float = 1800.0) -> Path | None:
    """Install ``requirements`` under ``root`` (a directory named by their hash) and return it, or None when the
    file is absent. Raises DepsError when the directory is not writable or pip fails."""
    if not requirements.is_file():
        return None
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = root / digest
    done = target / ".capstan-installed"
    if done.exists():
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DepsError(f"cannot install {requirements.name}: {root} is not writable ({e.strerror}); "
                        "set CAPSTAN_DEPS_DIR or --deps-dir to a writable directory") from None
    if not os.access(target, os.W_OK):
        raise DepsError(f"cannot install {requirements.name}: {target} is not writable; "
                        "set CAPSTAN_DEPS_DIR or --deps-dir to a writable directory")
    argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet",
            "--target", str(target), "-r", str(requirements)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DepsError(f"installing {requirements.name} took longer than {timeout:.0f}s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise DepsError(f"{requirements.name} could not be installed (pip exited {result.returncode}):\n{tail}")
    done.write_text("")
    return target


def activate(target: Path | None) -> None:
    if target is not None and str(target) not in sys.path:
        sys.path.insert(0, str(target))
