"""``capstan demo``: the fine-tuning flow for a newcomer, each step shown as it happens.

The project's tiny base model (built once, cached) is fine-tuned with the built-in template on the
identity dataset shipped in the repo, as a real training task on the running platform; the task's
/opt/ml/model is published to the model registry, deployed from the registry as an online service
(the transformers engine, in a sandbox on the inference node), and asked "who are you?" through the
OpenAI-compatible API on the gateway, with the official ``openai`` SDK when it is installed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from capstan_core.contracts.task_status import FINISHED

from ..client import ApiClient, ApiError, wait_until
from ..common import common_options, config
from .models import publish_task
from .tasks import OUTAGE_S, status_text

QUESTION = "who are you?"
EXPECTED = "Capstan's assistant"
# Enough for the tiny model to learn the identity answers in seconds on a CPU.
HYPERPARAMETERS: dict[str, Any] = {"LearningRate": 0.01, "Epoch": 30, "BatchSize": 4, "Step": 20}
STEPS = 6
SERVICE_READY_S = 300


def finetune_hyperparameters(base_model: Path, data: Path) -> tuple[str, dict[str, Any]]:
    """The command and hyperparameters of the demo's fine-tuning task (see capstan_finetune.staging)."""
    from capstan_finetune import staging

    inputs = staging.task_inputs(base_model, data, HYPERPARAMETERS)
    return inputs.command, inputs.hyperparameters


def follow_task(client: ApiClient, task_id: str, say: Callable[[str], None], timeout: float) -> dict[str, Any]:
    """Wait for the task to end, printing each status change and each line the template logs."""
    deadline = time.monotonic() + timeout
    status, after = "", None
    while True:
        t = wait_until(lambda: client.get(f"/training-tasks/{task_id}"), OUTAGE_S)
        if t["status"] != status:
            status = str(t["status"])
            say(f"      task {task_id}: {status_text(t)}")
        page = client.get(f"/training-tasks/{task_id}/logs", after_seq=after, limit=1000) or {}
        for line in page.get("lines") or []:
            after = max(int(line["seq"]), after or 0)
            if str(line.get("line", "")).startswith("[finetune]") or line.get("stream") == "platform":
                say(f"      | {line['line']}")
        if status in FINISHED and not page.get("lines"):
            return dict(t)
        if time.monotonic() > deadline:
            raise ApiError(f"task {task_id} did not finish within {timeout:.0f} s; it goes on (capstan task logs {task_id})")
        time.sleep(0.5)


@click.command()
@click.option("--model", "model_name", default="capstan-assistant", show_default=True, help="Registry model name.")
@click.option("--cpu", type=click.FloatRange(min=0.5), default=2, show_default=True, help="CPUs for the task.")
@click.option("--memory", type=click.FloatRange(min=1), default=4, show_default=True, help="GiB for the task.")
@click.option("--resource-group", "resource_group", metavar="ID", help="[default: the default group of `capstan up`]")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True, help="Seconds for the task.")
@common_options
def demo(model_name: str, cpu: float, memory: float, resource_group: str | None, timeout: float) -> None:
    """Fine-tune a tiny model on who it is, publish it, serve it, and ask it (a minute or two once cached)."""
    try:
        from capstan_finetune import staging, tinygpt
        from capstan_finetune.quiet import quiet_libraries
    except ImportError as e:
        raise click.ClickException(f"the demo needs the fine-tuning template (pip install -e finetune): {e}") from e
    quiet_libraries()
    cfg = config()

    def say(line: str) -> None:
        click.echo(line)

    started = time.monotonic()
    with cfg.client() as client:
        rg = resource_group or cfg.default_resource_group()
        say(f"[1/{STEPS}] base model: the project's tiny GPT and byte-level BPE tokenizer (built once, then cached)")
        base = tinygpt.ensure_base_model(staging.models_root(), lambda m: say(f"      {m}"))
        data = tinygpt.ASSETS / "identity.jsonl"
        say(f"[2/{STEPS}] data: {data.name}, e.g. \"{QUESTION}\" -> \"I am {EXPECTED}, ...\"")
        command, hp = finetune_hyperparameters(base, data)
        say(f"[3/{STEPS}] fine-tuning (LoRA, merged into the output) as a training task on resource group {rg}")
        task = client.post("/training-tasks", {
            "name": "demo-finetune", "resource_group_id": rg, "command": command, "hyperparameters": hp,
            "resources": {"cpu": cpu, "memory_gib": memory}, "tags": {"capstan": "demo"},
        })
        done = follow_task(client, task["id"], say, timeout)
        if done["status"] != "Succeeded":
            raise click.ClickException(f"the fine-tuning task {task['id']} ended {status_text(done)}; "
                                       f"see capstan task logs {task['id']}")
        say(f"[4/{STEPS}] publishing {task['id']}'s /opt/ml/model to the registry as model {model_name}")
        v = publish_task(client, task["id"], model_name, description="capstan demo: identity fine-tune")
        say(f"      {v['model_name']} version {v['version']}: {len(v['files'])} files, base {v['metadata']['base_model']}, "
            f"{v['metadata']['parameter_count']:,} parameters")
        say(f"[5/{STEPS}] deploying version {v['version']} as an online service (transformers engine, CPU)")
        svc = client.post("/services", {
            "name": f"{model_name}-demo"[:60], "generate_key": True, "tags": {"capstan": "demo"},
            "spec": {"runtime": "transformers", "resource_group_id": rg, "replicas": 1,
                     "model": {"kind": "registry", "model_id": v["model_id"], "version": v["version"]},
                     "resources": {"cpu": 1, "memory_gib": 2}},
        })
        sid, key = svc["id"], svc["created_key"]["secret"]
        wait_service_ready(client, sid, say, SERVICE_READY_S)
        base_url = f"{cfg.api_url().rstrip('/').removesuffix('/api/v1')}/{sid}/v1"
    say(f"[6/{STEPS}] asking it through the OpenAI-compatible API at {base_url}: {QUESTION}")
    reply = ask_service(base_url, key, sid, QUESTION)
    say(f"      -> {reply}")
    elapsed = time.monotonic() - started
    if EXPECTED not in reply:
        click.echo(f"the model did not answer as trained (expected it to say {EXPECTED!r})", err=True)
        sys.exit(1)
    say(f"done in {elapsed:.0f} s: the published model answers as trained, served as {sid}. Next: "
        f"capstan svc get {sid}; capstan svc delete {sid} (it keeps a CPU until then)")


def wait_service_ready(client: ApiClient, sid: str, say: Callable[[str], None], timeout: float) -> None:
    """Wait until the service has a ready replica, printing each state its instances go through."""
    deadline, seen = time.monotonic() + timeout, ""
    while True:
        s = wait_until(lambda: client.get(f"/services/{sid}"), OUTAGE_S)
        states = ", ".join(f"{i['id']} {i['state']}" for i in s["instances"]) or "no instance yet"
        if states != seen:
            seen = states
            say(f"      service {sid} {s['status']}: {states}")
        if s["running_replicas"] > 0:
            return
        if s["status"] == "Failed" or time.monotonic() > deadline:
            raise ApiError(f"service {sid} is not ready ({s['status']}); see capstan svc logs {sid}")
        time.sleep(0.5)


def ask_service(base_url: str, key: str, sid: str, question: str) -> str:
    """One greedy chat completion, with the openai SDK when installed (else plain HTTP, same protocol)."""
    messages = [{"role": "user", "content": question}]
    try:
        import openai
    except ImportError:
        import httpx

        r = httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                       json={"model": sid, "messages": messages, "max_tokens": 48, "temperature": 0})
        if r.status_code != 200:
            raise ApiError(f"the service answered {r.status_code}: {r.text[:300]}") from None
        return str(r.json()["choices"][0]["message"]["content"]).strip()
    sdk = openai.OpenAI(base_url=base_url, api_key=key, timeout=120)
    out = sdk.chat.completions.create(model=sid, messages=messages, max_tokens=48, temperature=0)  # type: ignore[arg-type]
    return str(out.choices[0].message.content or "").strip()
