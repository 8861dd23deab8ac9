#!/usr/bin/env python3
"""Device check (needs a CUDA GPU and a CUDA build of torch): the trainer's sitecustomize hook really
caps PyTorch at CAPSTAN_GPU_MEMORY_FRACTION.

It starts a fresh python with the hook first on PYTHONPATH and CAPSTAN_GPU_MEMORY_FRACTION=0.5, as the
agent does inside the sandbox for an instance holding half a card, and there:

* allocates about 60% of device 0's memory: must raise ``torch.OutOfMemoryError`` (the cap);
* allocates about 30%: must succeed;
* checks that the hook applied the fraction to every visible device.

A control run without the fraction must allocate the same 60% successfully, so the refusal above comes
from the hook and not from memory someone else holds. Usage (from the repo root, in the venv)::

    python scripts/device_check_gpu_fraction.py        # exit 0: passed; 1: failed; 2: no GPU
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK_DIR = ROOT / "agentkit" / "src" / "capstan_agentkit" / "sandbox" / "pyhook"
FRACTION = "0.5"

CHILD = r"""
import json, sys
import torch
import sitecustomize as hook

out = {"hook_active": hook.ACTIVE, "cuda": torch.cuda.is_available()}
if not out["cuda"]:
    print(json.dumps(out)); sys.exit(0)
total = torch.cuda.get_device_properties(0).total_memory
out["total_gib"] = round(total / 2**30, 1)

def try_alloc(share):
    try:
        x = torch.empty(int(total * share), dtype=torch.uint8, device="cuda:0")
        del x
        return "ok"
    except torch.OutOfMemoryError:
        return "oom"
    finally:
        torch.cuda.empty_cache()

out["alloc_60"] = try_alloc(0.6)
out["alloc_30"] = try_alloc(0.3)
out["applied"] = list(hook.APPLIED)
out["devices"] = torch.cuda.device_count()
print(json.dumps(out))
"""


def run_child(fraction: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "CAPSTAN_GPU_MEMORY_FRACTION"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK_DIR), env.get("PYTHONPATH", "")) if p)
    if fraction is not None:
        env["CAPSTAN_GPU_MEMORY_FRACTION"] = fraction
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"child python failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    capped = run_child(FRACTION)
    print("with fraction", FRACTION, capped)
    if not capped.get("cuda"):
        print("no CUDA device visible: nothing to check")
        return 2
    control = run_child(None)
    print("without fraction", control)
    checks = {
        "hook active": capped["hook_active"] is True,
        "control run can take 60%": control["alloc_60"] == "ok" and control["hook_active"] is False,
        "60% refused under the cap": capped["alloc_60"] == "oom",
        "30% allowed under the cap": capped["alloc_30"] == "ok",
        "fraction set on every device": capped["applied"] == list(range(int(str(capped["devices"])))),
    }
    for name, ok in checks.items():
        print(("PASS " if ok else "FAIL ") + name)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
