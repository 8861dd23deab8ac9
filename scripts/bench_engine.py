#!/usr/bin/env python3
"""Engine benchmark (issue #9 point 11): the transformers engine's tokens/s against raw ``model.generate``
on the same prompts, side by side in one run.

- batch 1: the prompts one at a time, through the engine's HTTP API vs ``model.generate`` (aim: ≥ 90%);
- 8 concurrent: the 8 prompts at once through the engine (continuous batching) vs raw ``generate``, which
  serves them one by one (aim: higher total throughput).

The model: the project's tiny GPT widened to a CPU-meaningful size (random weights, its tokenizer), greedy,
a fixed number of new tokens (ignore_eos / min_new_tokens) so both sides generate exactly the same work.
Both sides use the same number of torch threads. Rounds alternate raw and engine; the best round counts.
Two figures per line: wall-clock tokens/s, and tokens per CPU-second of the process doing the work (the
engine's whole process: HTTP, event loop and scheduler included) — on a shared, busy machine the wall clock
swings several-fold between rounds while CPU time measures the work itself.

    .venv/bin/python scripts/bench_engine.py [--tokens 64] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPTS = [
    "The river runs to the sea and", "A tokenizer turns text into", "Training a model starts with",
    "The scheduler places each task on", "When the night is long the", "Every service group has a",
    "An engine serves requests by", "The gateway relays each stream",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(root: Path, width: int, layers: int) -> Path:
    from capstan_engines.testing import widen
    from capstan_finetune import staging, tinygpt

    tiny = tinygpt.ensure_base_model(staging.models_root())
    return widen(tiny, root / f"bench-gpt-{width}x{layers}", n_embd=width, n_layer=layers, n_head=8, n_positions=1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_one_by_one(model: object, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    import torch

    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens,  # type: ignore[attr-defined]
                                 do_sample=False)
            assert out.shape[1] - len(ids) == tokens
    n = len(prompts) * tokens
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def engine_measure(pid: int, url: str, prompts: list[list[int]], tokens: int, concurrent: bool) -> tuple[float, float]:
    cpu = cpu_seconds(pid)
    wall = asyncio.run(engine_run(url, prompts, tokens, concurrent))
    return wall, len(prompts) * tokens / (cpu_seconds(pid) - cpu)


async def engine_run(url: str, prompts: list[list[int]], tokens: int, concurrent: bool) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(ids: list[int]) -> int:
            r = await client.post(url + "/v1/completions", json={
                "prompt": ids, "max_tokens": tokens, "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        start = time.perf_counter()
        if concurrent:
            done = sum(await asyncio.gather(*[one(p) for p in prompts]))
        else:
            done = 0
            for p in prompts:
                done += await one(p)
        elapsed = time.perf_counter() - start
    assert done == len(prompts) * tokens
    return done / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (default: the CPU budget)")
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capstan_engines.transformers.model import cpu_budget

    threads = args.threads or cpu_budget()
    torch.set_num_threads(threads)
    root = Path(tempfile.gettempdir()) / "capstan-bench-engine"
    model_dir = build_model(root, args.width, args.layers)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    params = sum(t.numel() for t in model.parameters())
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    print(f"model: GPT-2 {args.width}x{args.layers} ({params / 1e6:.1f}M parameters), {len(prompts)} prompts, "
          f"{args.tokens} new tokens each, greedy, {threads} torch thread(s), {args.rounds} rounds (best counts)")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine = subprocess.Popen([sys.executable, "-m", "capstan_engines.transformers", "--model-dir", str(model_dir),
                               "--port", str(port), "--host", "127.0.0.1", "--threads", str(threads),
                               "--max-batch", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or engine.poll() is not None:
                    raise SystemExit("engine did not start") from None
            time.sleep(0.2)
        # warm both sides
        raw_one_by_one(model, prompts[:1], 8)
        asyncio.run(engine_run(url, prompts[:2], 8, concurrent=True))
        raw: list[tuple[float, float]] = []
        eng1: list[tuple[float, float]] = []
        eng8: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            raw.append(raw_one_by_one(model, prompts, args.tokens))
            eng1.append(engine_measure(engine.pid, url, prompts, args.tokens, concurrent=False))
            eng8.append(engine_measure(engine.pid, url, prompts, args.tokens, concurrent=True))
        best = [(max(w for w, _ in xs), max(c for _, c in xs)) for xs in (raw, eng1, eng8)]
        (raw_w, raw_c), (b1_w, b1_c), (c8_w, c8_c) = best
        print(f"{'':34}{'tokens/s':>10}{'ratio':>8}{'tokens/CPU-s':>14}{'ratio':>8}")
        print(f"{'raw model.generate, one by one':34}{raw_w:10.1f}{1:8.2f}{raw_c:14.1f}{1:8.2f}")
        print(f"{'engine, batch 1 (one at a time)':34}{b1_w:10.1f}{b1_w / raw_w:8.2f}{b1_c:14.1f}{b1_c / raw_c:8.2f}"
              "   aim >= 0.90")
        print(f"{'engine, 8 concurrent':34}{c8_w:10.1f}{c8_w / raw_w:8.2f}{c8_c:14.1f}{c8_c / raw_c:8.2f}"
              "   aim > 1.00")
        for name, xs in (("raw", raw), ("engine b1", eng1), ("engine c8", eng8)):
            print(f"rounds {name:10} wall " + " ".join(f"{w:.1f}" for w, _ in xs) + " | per CPU-s "
                  + " ".join(f"{c:.1f}" for _, c in xs))
        ok = b1_c / raw_c >= 0.9 and c8_w > raw_w and c8_c > raw_c
        print("PASS" if ok else "BELOW AIM")
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(30)
        except subprocess.TimeoutExpired:
            engine.kill()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
