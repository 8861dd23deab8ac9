"""GPU samples of an instance's cards (SPEC §0 "Monitoring": GPU %, GPU memory % and bytes, per card),
read with ``nvidia-smi`` on the host for the cards the instance holds (``CUDA_VISIBLE_DEVICES``).
A card is shared by the instances holding tenths of it: its figures are the card's, not the instance's."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"
_TIMEOUT_S = 10


def gpu_samples(devices: str) -> list[dict[str, Any]]:
    """One sample per card in ``devices`` ("0,3"); none without cards or without ``nvidia-smi``."""
    exe = shutil.which("nvidia-smi")
    if not devices or exe is None:
        return []
    try:
        run = subprocess.run([exe, _QUERY, "--format=csv,noheader,nounits", "-i", devices],
                             capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in run.stdout.splitlines() if run.returncode == 0 else []:
        try:
            index, util, used, total = (float(x.strip()) for x in line.split(","))
        except ValueError:
            continue  # "[N/A]" and the like
        out.append({"index": int(index), "gpu_percent": util, "memory_bytes": int(used) << 20,
                    "memory_percent": round(100 * used / total, 1) if total else None})
    return out
