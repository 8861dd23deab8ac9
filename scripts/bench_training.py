#!/usr/bin/env python
"""Training speed through the platform vs run directly, and submit-to-running latency on an idle pool.

  .venv/bin/python scripts/bench_training.py                      # 3 rounds of 1,500 steps, 10 latency samples
  .venv/bin/python scripts/bench_training.py --rounds 5 --steps 3000 --latency-samples 20

The script starts a real platform (``capstan up`` in a temporary data dir: nats-server, the services,
the gateway, one trainer agent) and stops it at the end.

1. **Steps/s.** The same training loop, the built-in fine-tuning template (``python -m capstan_finetune``:
   LoRA on the project's tiny GPT, the identity dataset, BatchSize 4, no checkpoint inside the timed
   loop), run side by side, at the same time: (a) directly, a child process of this script, and (b) as
   a training task on the platform (its own network namespace, cgroup limits, an unprivileged uid,
   bubblewrap). Each gets one core: the task asks for 1 CPU (its cgroup quota; the sandbox sets
   ``OMP_NUM_THREADS=1``), the direct run has ``OMP_NUM_THREADS=1``. Running them together means load
   from anything else on the machine falls on both alike (run one after the other, a shared 2-core
   machine gave ratios from 0.3 to 5). The direct run starts when the task logs that its loop begins.
   The rate is the one the template logs for its loop (steps / seconds from its first step to its
   last). Per round, ratio = platform / direct; the median of ``--rounds`` rounds is reported.
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
import signal
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


def start_direct(hp: dict[str, Any], work: Path) -> subprocess.Popen[str]:
    hp_file = work / "hp.json"
    hp_file.write_text(json.dumps({**hp, "OutputDir": str(work / "out"), "ModelDir": str(work / "model")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "capstan_finetune", "--hyperparameters", str(hp_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


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


def side_by_side(api: Api, inputs: staging.TaskInputs, steps: int, work: Path) -> tuple[float, float]:
    """(direct, platform) steps/s of one round, both loops running at the same time."""
    task = api.submit("bench-train", inputs.command, inputs.hyperparameters, cpu=1, memory=4)
    deadline = time.monotonic() + 300
    while not any(ln.startswith("[finetune] train:") for ln in api.lines(task["id"])):
        if api.task(task["id"])["status"] in ("Succeeded", "Failed", "Stopped") or time.monotonic() > deadline:
            raise RuntimeError(f"platform run {task['id']} never started its loop:\n" + "\n".join(api.lines(task["id"])))
        time.sleep(0.1)
    direct = start_direct(inputs.hyperparameters, work)
    out, err = direct.communicate(timeout=1800)
    if direct.returncode != 0:
        raise RuntimeError(f"direct run failed ({direct.returncode}):\n{err[-2000:]}")
    done = api.wait(task["id"], ("Succeeded", "Failed", "Stopped"))
    lines = api.lines(task["id"])
    if done["status"] != "Succeeded":
        raise RuntimeError(f"platform run {task['id']} {done['status']}:\n" + "\n".join(lines[-20:]))
    return rate_of(out.splitlines(), steps), rate_of(lines, steps)


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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the platform is stopped (finally) on kill
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
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
            direct, platform, ratios = [], [], []
            for r in range(a.rounds):
                work = Path(tmp) / f"direct-{r}"
                work.mkdir()
                d, p = side_by_side(api, inputs, a.steps, work)
                direct.append(d)
                platform.append(p)
                ratios.append(p / d)
                print(f"round {r + 1}/{a.rounds}: direct {d:.1f} steps/s, platform {p:.1f} steps/s, ratio {p / d:.3f}",
                      flush=True)
        finally:
            capstan("down", data_dir=data_dir)
    print()
    print(f"{'measure':44} {'value':>10}")
    print(f"{'steps/s, direct (median of ' + str(a.rounds) + ')':44} {statistics.median(direct):10.1f}")
    print(f"{'steps/s, through the platform (median)':44} {statistics.median(platform):10.1f}")
    print(f"{'ratio platform / direct, median (aim >= 0.97)':44} {statistics.median(ratios):10.3f}"
          f"   (rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
    for name, xs in (("submit->Running, server clocks, ms", server), ("submit->Running seen by client, ms", client)):
        print(f"{name:44} p50 {pct(xs, 0.5):7.0f}  p90 {pct(xs, 0.9):7.0f}  max {max(xs):7.0f}")


if __name__ == "__main__":
    main()
