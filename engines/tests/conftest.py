"""Engines tested as they run: real processes on a free port, the project's tiny GPT (built once per
install by capstan_finetune, the same cached step the fine-tuning tests use), the official openai SDK,
and OpenAI's published schemas."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capstan_finetune import staging, tinygpt

# OpenAI's published schemas: $CAPSTAN_OPENAI_SCHEMAS, else ../shared/openai/ next to the checkout, else the
# copy of that file kept in tests/data (a clean clone elsewhere still validates against the same schemas)
SCHEMA_PLACES = [Path(p) for p in (os.environ.get("CAPSTAN_OPENAI_SCHEMAS", ""),) if p] + [
    Path(__file__).resolve().parents[2].parent / "shared" / "openai" / "openai_schemas.json",
    Path("/work/shared/openai/openai_schemas.json"),
    Path(__file__).resolve().parents[2] / "tests" / "data" / "openai_schemas.json",  # a copy kept in the repo
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    """An engine started as ``python -m capstan_engines.<runtime> ...``; ready once /health answers 200."""

    def __init__(self, runtime: str, args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        if runtime == "transformers" and "--threads" not in args:
            args = [*args, "--threads", "1"]  # the test machine is shared: one thread each keeps steps quick
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"capstan_engines.{runtime}", "--port", str(self.port), "--host", "127.0.0.1",
             *args], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 120.0) -> EngineProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"engine not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log and self.log.exists() else ""

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self._out is not subprocess.DEVNULL:
                self._out.close()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return tinygpt.ensure_base_model(staging.models_root())


@pytest.fixture(scope="session")
def wide_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model widened (random weights, 4096 positions): generations long enough to watch."""
    from capstan_engines.testing import widen

    return widen(tiny_model, tmp_path_factory.mktemp("wide") / "model", n_embd=256, n_layer=4, n_head=4)


@pytest.fixture(scope="session")
def engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One transformers engine for the read-only tests of the session."""
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    proc = EngineProcess("transformers", ["--model-dir", str(tiny_model), "--served-model-name", "tiny",
                                          "--max-batch", "8", "--device", "cpu"], log=log)
    try:
        yield proc.wait_ready()
    finally:
        proc.terminate()


@pytest.fixture
def start_engine(tmp_path: Path) -> Iterator[Any]:
    """start_engine(runtime, args, env=None): a started engine process, stopped after the test."""
    started: list[EngineProcess] = []

    def start(runtime: str, args: list[str], env: dict[str, str] | None = None) -> EngineProcess:
        proc = EngineProcess(runtime, args, env, log=tmp_path / f"{runtime}-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()


@pytest.fixture(scope="session")
def schemas() -> dict[str, Any]:
    for path in SCHEMA_PLACES:
        if path.is_file():
            return dict(json.loads(path.read_text()))
    raise FileNotFoundError(f"OpenAI's schemas not found at {', '.join(map(str, SCHEMA_PLACES))}; "
                            "set CAPSTAN_OPENAI_SCHEMAS")


@pytest.fixture(scope="session")
def validate(schemas: dict[str, Any]) -> Any:
    """validate(schema_name, body): raises unless body matches OpenAI's published schema."""
    from jsonschema import Draft202012Validator

    validators = {name: Draft202012Validator(s) for name, s in schemas.items() if not name.startswith("_")}

    def check(name: str, body: Any) -> None:
        validators[name].validate(body)

    return check
