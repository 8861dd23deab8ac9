#!/usr/bin/env python
"""Training speed through the platform vs run directly, and submit-to-running latency on an idle pool.

  .venv/bin/python scripts/bench_training.py                      # 3 rounds of 400 steps, 10 latency samples
  .venv/bin/python scripts/bench_training.py --rounds 5 --steps 800 --latency-samples 20

The script starts a real platform (``capstan up`` in a temporary data dir: nats-server, the services,
the gateway, one trainer agent) and stops it at the end.

1. **Steps/s.** The same training loop, the built-in fine-tuning template (``python -m capstan_finetune``:
   LoRA on the project's tiny GPT, the identity dataset, BatchSize 4, no checkpoint inside the timed
   loop), run (a) directly as a child process of this script with the thread count the sandbox gives
   a 2-CPU instance (``OMP_NUM_THREADS=2``), and (b) as a training task on the platform (2 CPUs, 4 GiB:
   its own network namespace, cgroup limits, an unprivileged uid, bubblewrap). The rate is the one the
   template logs for its loop (steps / seconds from its first step to its last; model loading and
   interpreter start are outside it). Runs alternate direct/platform, ``--rounds`` times; the medians
   are compared: ratio = platform / direct.
2. **Submit-to-running.** With nothing else queued or running, ``--latency-samples`` one-instance tasks
   (``sleep 0.2``) are submitted one after the other (each waits for the previous one to end). Per task:
   the trainer's ``started_at - created_at`` (submission accepted -> the instance reported Running by the
   agent; server clocks), and the client's time from sending the POST until a GET shows ``Running``
   (polled every 20 ms). p50 / p90 / max of each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from capstan_core.natsserver import free_port
from capstan_finetune import staging, tinygpt

BIN = Path(sys.executable).parent
RATE = re.compile(r"step (\d+)/(\d+) .*\(([\d.]+) steps/s\)")


def capstan(*args: str, data_dir: Path) -> None:
    subprocess.run([str(BIN / "capstan"), "--data-dir", str(data_dir), *args], check=True, capture_output=True,
                   text=True, timeout=300)


def hyperparameters(steps: int) -> dict[str, Any]:
    return {"LearningRate": 0.01, "Epoch": steps, "BatchSize": 4, "MaxSteps": steps, "Step": 10 * steps,
            "GradientCheckPointing": False, "ResumeFromCheckpoint": False, "overwrite_output_dir": True}


def rate_of(lines: list[str], steps: int) -> float:
    for line in reversed(lines):
        m = RATE.search(line)
        if m and int(m.group(1)) == steps:
            return float(m.group(3))
    raise RuntimeError("no final step line in:\n" + "\n".join(lines[-20:]))


def run_direct(hp: dict[str, Any], work: Path, steps: int) -> float:
    hp_file = work / "hp.json"
    hp_file.write_text(json.dumps({**hp, "OutputDir": str(work / "out"), "ModelDir": str(work / "model")}))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-m", "capstan_finetune", "--hyperparameters", str(hp_file)],
                         capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"direct run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return rate_of(out.stdout.splitlines(), steps)


class Api:
    def __init__(self, data_dir: Path, port: int) -> None:
        token = (data_dir / "admin-token").read_text().strip()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.rg = (data_dir / "run" / "default-rg").read_text().strip()

    def submit(self, name: str, command: str, hp: dict[str, Any] | None = None, cpu: float = 0.5,
               memory: float = 0.5) -> dict[str, Any]:
        r = self.http.post("/training-tasks", json={
            "name": name, "resource_group_id": self.rg, "command": command, "hyperparameters": hp or {},
            "resources": {"cpu": cpu, "memory_gib": memory}})
        r.raise_for_status()
        return dict(r.json())

    def task(self, task_id: str) -> dict[str, Any]:
        r = self.http.get(f"/training-tasks/{task_id}")
        r.raise_for_status()
        return dict(r.json())

    def wait(self, task_id: str, statuses: tuple[str, ...], timeout: float = 900, poll: float = 0.2) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            t = self.task(task_id)
            if t["status"] in statuses:
                return t
            if time.monotonic() > deadline:
                raise RuntimeError(f"{task_id} is {t['status']} after {timeout} s")
            time.sleep(poll)

    def lines(self, task_id: str) -> list[str]:
        r = self.http.get(f"/training-tasks/{task_id}/logs", params={"limit": 10000})
        r.raise_for_status()
        return [ln["line"] for ln in r.json()["lines"]]


def run_platform(api: Api, inputs: staging.TaskInputs, steps: int) -> float:
    task = api.submit("bench-train", inputs.command, inputs.hyperparameters, cpu=2, memory=4)
    done = api.wait(task["id"], ("Succeeded", "Failed", "Stopped"))
    lines = api.lines(task["id"])
    if done["status"] != "Succeeded":
        raise RuntimeError(f"platform run {task['id']} {done['status']}:\n" + "\n".join(lines[-20:]))
    return rate_of(lines, steps)


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


def latency(api: Api, samples: int) -> tuple[list[float], list[float]]:
    server, client = [], []
    for i in range(samples):
        sent = time.monotonic()
        task = api.submit(f"bench-latency-{i}", "sleep 0.2")
        t = api.wait(task["id"], ("Running", "Succeeded", "Failed"), timeout=60, poll=0.02)
        client.append((time.monotonic() - sent) * 1000)
        done = api.wait(task["id"], ("Succeeded", "Failed"), timeout=60)
        if t["status"] == "Failed" or done["status"] != "Succeeded":
            raise RuntimeError(f"latency task {task['id']} {done['status']}")
        server.append(_ms(done["started_at"]) - _ms(done["created_at"]))
    return server, client


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--latency-samples", type=int, default=10)
    a = ap.parse_args()
    base = tinygpt.ensure_base_model(staging.models_root(), lambda m: print(f"base model: {m}", flush=True))
    # the same inputs both ways: the staged base model and data (read-only), the same hyperparameters
    inputs = staging.task_inputs(base, tinygpt.ASSETS / "identity.jsonl", hyperparameters(a.steps))
    with tempfile.TemporaryDirectory(prefix="capstan-bench-") as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        print(f"starting a platform in {data_dir} ...", flush=True)
        capstan("up", "--port", str(port), data_dir=data_dir)
        try:
            api = Api(data_dir, port)
            print(f"submit-to-running, {a.latency_samples} samples on an idle pool ...", flush=True)
            server, client = latency(api, a.latency_samples)
            direct, platform = [], []
            for r in range(a.rounds):
                work = Path(tmp) / f"direct-{r}"
                work.mkdir()
                direct.append(run_direct(inputs.hyperparameters, work, a.steps))
                platform.append(run_platform(api, inputs, a.steps))
                print(f"round {r + 1}/{a.rounds}: direct {direct[-1]:.1f} steps/s, platform {platform[-1]:.1f} steps/s",
                      flush=True)
        finally:
            capstan("down", data_dir=data_dir)
    d, p = statistics.median(direct), statistics.median(platform)
    print()
    print(f"{'measure':44} {'value':>10}")
    print(f"{'steps/s, direct (median of ' + str(a.rounds) + ')':44} {d:10.1f}")
    print(f"{'steps/s, through the platform (median)':44} {p:10.1f}")
    print(f"{'ratio platform / direct (aim >= 0.97)':44} {p / d:10.3f}")
    for name, xs in (("submit->Running, server clocks, ms", server), ("submit->Running seen by client, ms", client)):
        print(f"{name:44} p50 {pct(xs, 0.5):7.0f}  p90 {pct(xs, 0.9):7.0f}  max {max(xs):7.0f}")


if __name__ == "__main__":
    main()
