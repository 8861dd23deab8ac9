"""Files the sandbox's unprivileged uid must read (built-in models, staged inputs): nothing in them is
secret, and libraries write some files 0600 (safetensors does)."""

from __future__ import annotations

import os
from pathlib import Path


def make_world_readable(root: Path) -> None:
    for d, _, files in os.walk(root):
        os.chmod(d, 0o755)  # noqa: S103 - read by the sandbox's uid; nothing here is secret
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
