"""Files the sandbox's unprivileged uid must read (built-in models, staged inputs): nothing in them is
secret, and libraries write some files 0600 (safetensors does)."""

from __future__ import annotations

import os
from pathlib import Path


def readable_dirs(*dirs: Path) -> None:
    """Make each directory, and the ancestors it lacks, open to every uid whatever the process's umask
    (a platform process may run with 077: a 0700 directory on the way would hide what is below).
    Directories that already exist are left as they are."""
    for d in dirs:
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            m.mkdir(exist_ok=True)
            os.chmod(m, 0o755)  # noqa: S103 - read by the sandbox's uid; nothing here is secret


def make_world_readable(root: Path) -> None:
    for d, _, files in os.walk(root):
        os.chmod(d, 0o755)  # noqa: S103 - read by the sandbox's uid; nothing here is secret
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
