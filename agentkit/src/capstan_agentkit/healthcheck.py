"""Node health checks an agent runs before it joins (deploy checks) and periodically after.

Each check is a plain function returning a ``Check``; ``run_checks`` turns an exception into a
failing check, so a broken probe is reported, never fatal. Thresholds come from the environment:
``CAPSTAN_HEALTH_MIN_FREE_DISK_GIB`` (default 1) and ``CAPSTAN_HEALTH_MIN_AVAILABLE_MEMORY_GIB``
(default 0.25).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from capstan_core.capacity import Capacity, parse_nvidia_smi_list


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


CheckFn = Callable[[], Check]


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def disk(path: Path) -> Check:
    need = _env_float("CAPSTAN_HEALTH_MIN_FREE_DISK_GIB", 1.0)
    free = shutil.disk_usage(path).free / 1024**3
    detail = f"{free:.1f} GiB free in {path} (needs {need:g})"
    return Check("disk", free >= need, detail)


def memory() -> Check:
    need = _env_float("CAPSTAN_HEALTH_MIN_AVAILABLE_MEMORY_GIB", 0.25)
    available = 0.0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 1024**2
    return Check("memory", available >= need, f"{available:.1f} GiB available (needs {need:g})")


def gpus(capacity: Capacity) -> Check:
    if not capacity.gpus:
        return Check("gpus", True, "no GPUs")
    declared = ",".join(f"{t}:{n}" for t, n in sorted(capacity.gpus.items()))
    if capacity.simulated_gpus:
        return Check("gpus", True, f"{declared} declared (simulated, no device)")
    smi = shutil.which("nvidia-smi")
    if not smi:
        return Check("gpus", False, f"{declared} expected but nvidia-smi is missing")
    run = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    if run.returncode != 0:
        return Check("gpus", False, f"nvidia-smi failed: {(run.stderr or run.stdout).strip()[:200]}")
    seen = parse_nvidia_smi_list(run.stdout)
    found = ",".join(f"{t}:{n}" for t, n in sorted(seen.items())) or "none"
    return Check("gpus", seen == capacity.gpus, f"expected {declared}, nvidia-smi lists {found}")


def basic_checks(capacity: Capacity, work_dir: Path) -> list[CheckFn]:
    """What every agent checks: free disk where instances run, available memory, the GPUs it offers."""
    return [lambda: disk(work_dir), memory, lambda: gpus(capacity)]


def run_checks(checks: Iterable[CheckFn]) -> list[Check]:
    out: list[Check] = []
    for fn in checks:
        try:
            out.append(fn())
        except Exception as e:  # a broken probe is a failing check, with its reason
            out.append(Check(getattr(fn, "__name__", "check"), False, f"{type(e).__name__}: {e}"[:1000]))
    return out
