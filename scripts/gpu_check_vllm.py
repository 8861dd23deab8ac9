#!/usr/bin/env python3
"""The vLLM runtime on a GPU machine, end to end (issue #9 point 4): one prepared script.

1. builds the project's tiny GPT (capstan_finetune.tinygpt) in a temp dir;
2. starts ``python -m capstan_engines.vllm`` on it (SPEC 6.6 env vars → ``vllm serve``, the argv printed);
3. asks /v1/models, /v1/chat/completions, /v1/completions and a stream over HTTP and prints what came back;
4. SIGTERMs the server. Exit 0 when every check passed.

If vLLM refuses the tiny model's shape (head size 24 is below what some attention kernels take), it retries on
the same architecture widened to head size 64 (random weights: the answers are noise, serving is what is
proven) and exits 1 so the note records it. Exit 3: vLLM or CUDA is missing here.

    python scripts/gpu_check_vllm.py [--timeout 900]

Needs torch, transformers, tokenizers and vLLM importable; the repo's packages are used from the source tree.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = [ROOT / "engines" / "src", ROOT / "finetune" / "src"]
sys.path[:0] = [str(p) for p in SRC]


def http(method: str, url: str, body: Any = None, timeout: float = 120) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - our own local server
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check(name: str, ok: bool, detail: str, results: list[tuple[str, bool]]) -> None:
    results.append((name, ok))
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def serve_and_ask(model_dir: Path, timeout: float, log: Path) -> bool:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, SRC), os.environ.get("PYTHONPATH", "")]),
           "DTYPE": "float16", "GPU_MEMORY_UTILIZATION": "0.3", "ENFORCE_EAGER": "true", "MODEL_ID": "capstan-tiny-gpt"}
    base = [sys.executable, "-m", "capstan_engines.vllm", "--model-dir", str(model_dir), "--port", str(port),
            "--host", "127.0.0.1", "--served-model-name", "tiny"]
    argv = subprocess.run([*base, "--print-argv"], env=env, capture_output=True, text=True, check=True).stdout
    print("vllm argv:", " ".join(json.loads(argv)), flush=True)
    results: list[tuple[str, bool]] = []
    with open(log, "wb") as out:
        proc = subprocess.Popen(base, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    print(f"vllm exited with {proc.returncode} before serving; last log lines:")
                    print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
                    return False
                try:
                    if http("GET", url + "/health", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() - started > timeout:
                    print(f"vllm not ready after {timeout:.0f}s")
                    return False
                time.sleep(1)
            print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
            code, body = http("GET", url + "/v1/models")
            ids = [m["id"] for m in json.loads(body).get("data", [])] if code == 200 else []
            check("models", ids == ["tiny"], f"{code} {ids}", results)
            messages = [{"role": "user", "content": "who are you?"}]
            code, body = http("POST", url + "/v1/chat/completions", {"model": "tiny", "messages": messages,
                                                                      "temperature": 0, "max_tokens": 40})
            chat = json.loads(body)
            text = chat["choices"][0]["message"]["content"] if code == 200 else body.decode(errors="replace")
            check("chat", code == 200 and bool(text) and chat.get("usage", {}).get("total_tokens", 0) > 0,
                  f"{code} {text!r} usage={chat.get('usage')}", results)
            code, body = http("POST", url + "/v1/completions", {"model": "tiny", "prompt": "The model",
                                                                 "max_tokens": 16, "temperature": 0})
            comp = json.loads(body)
            text = comp["choices"][0]["text"] if code == 200 else body.decode(errors="replace")
            check("completions", code == 200 and comp.get("usage", {}).get("completion_tokens", 0) > 0,
                  f"{code} {text!r} usage={comp.get('usage')}", results)
            code, body = http("POST", url + "/v1/chat/completions", {
                "model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 40, "stream": True,
                "stream_options": {"include_usage": True}})
            frames = [ln[6:] for ln in body.decode().splitlines() if ln.startswith("data: ")]
            chunks = [json.loads(f) for f in frames if f != "[DONE]"]
            streamed = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
            check("stream", code == 200 and frames[-1:] == ["[DONE]"] and bool(chunks[-1].get("usage")),
                  f"{code} {len(chunks)} chunks {streamed!r} final usage={chunks[-1].get('usage') if chunks else None}",
                  results)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                print(f"vllm exited {proc.wait(60)} after SIGTERM")
            except subprocess.TimeoutExpired:
                proc.kill()
    return all(ok for _, ok in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=900, help="seconds vLLM may take to become ready")
    args = p.parse_args()
    try:
        import torch
        import vllm
    except ImportError as e:
        print(f"cannot run: {e} (this check needs vLLM and torch with CUDA)")
        raise SystemExit(3) from None
    if not torch.cuda.is_available():
        print("cannot run: no CUDA device visible")
        raise SystemExit(3)
    print(f"vllm {vllm.__version__}, torch {torch.__version__}, GPU {torch.cuda.get_device_name(0)}", flush=True)

    from capstan_engines.testing import widen
    from capstan_finetune import tinygpt

    work = Path(tempfile.mkdtemp(prefix="capstan-gpu-check-"))
    tiny = tinygpt.ensure_base_model(work)
    print(f"tiny model: {tiny}", flush=True)
    if serve_and_ask(tiny, args.timeout, work / "vllm-tiny.log"):
        print("PASS: vLLM served the project's tiny model through capstan_engines.vllm")
        raise SystemExit(0)
    wide = widen(tiny, work / "tiny-head64", n_embd=256, n_layer=2, n_head=4, n_positions=256)
    print(f"retrying with the tiny architecture at head size 64: {wide}", flush=True)
    ok = serve_and_ask(wide, args.timeout, work / "vllm-head64.log")
    print("PARTIAL: only the head-size-64 variant served" if ok else "FAIL: vLLM served neither model")
    raise SystemExit(1 if ok else 2)


if __name__ == "__main__":
    main()
