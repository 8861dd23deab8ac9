"""What this machine offers: CPU cores, memory and GPUs by card type (detected, or declared for tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Capacity:
    cpu: float
    memory_gib: float
    gpus: dict[str, int] = field(default_factory=dict)
    simulated_gpus: bool = False


def parse_gpus(text: str) -> dict[str, int]:
    """``"A100:8,T4:2"`` -> {"A100": 8, "T4": 2}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition(":")
        if not name or not count.isdigit():
            raise ValueError(f"GPU declaration {part!r} must look like A100:8")
        out[name] = out.get(name, 0) + int(count)
    return out


def detect_memory_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1024 * 1024), 2)
    return 1.0


_VENDOR_WORDS = frozenset({"NVIDIA", "Tesla", "GeForce", "Quadro"})


def parse_nvidia_smi_list(out: str) -> dict[str, int]:
    """Cards by type from ``nvidia-smi -L`` lines like ``GPU 0: NVIDIA A100-SXM4-80GB (UUID: ...)``."""
    gpus: dict[str, int] = {}
    for line in out.splitlines():
        if not line.startswith("GPU ") or ":" not in line:
            continue
        words = [w for w in line.split(":", 1)[1].split("(")[0].split() if w not in _VENDOR_WORDS]
        model = words[0].split("-")[0] if words else ""
        if model:
            gpus[model] = gpus.get(model, 0) + 1
    return gpus


def detect_gpus() -> dict[str, int]:
    """Cards by type from ``nvidia-smi -L`` (none on a machine without the NVIDIA driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    return parse_nvidia_smi_list(out)


def detect(cpu: float = 0, memory_gib: float = 0, gpus: str = "") -> Capacity:
    """Detected capacity, with any declared value taking precedence; declared GPUs are simulated."""
    return Capacity(
        cpu=cpu or float(os.cpu_count() or 1),
        memory_gib=memory_gib or detect_memory_gib(),
        gpus=parse_gpus(gpus) if gpus else detect_gpus(),
        simulated_gpus=bool(gpus),
    )
