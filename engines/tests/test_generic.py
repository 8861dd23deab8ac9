"""The generic runtime (SPEC 6.7) as it runs: a real model_service.py, a requirements.txt pip installs at
start (a wheel built here, installed with the index off: nothing is downloaded), and its refusals."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVICE = '''
import json
import os

import scalehelper  # installed from requirements.txt at start


class Model:
    def __init__(self, model_dir):
        self.model_dir = model_dir

    def load(self):
        with open(os.path.join(self.model_dir, "weights.json")) as f:
            self.scale = json.load(f)["scale"] * scalehelper.FACTOR

    def preprocess(self, body):
        if "crash" in body:
            raise ValueError("asked to crash")
        return body["x"]

    def predict(self, x):
        if x == "object":
            return object()
        return [v * self.scale for v in x]

    def postprocess(self, y):
        return {"y": y}


class Helper:  # not a model class: no predict()
    pass
'''


def make_wheel(dest: Path) -> Path:
    wheel = dest / "scalehelper-0.1-py3-none-any.whl"
    files = {
        "scalehelper/__init__.py": "FACTOR = 3\n",
        "scalehelper-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: scalehelper\nVersion: 0.1\n",
        "scalehelper-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "scalehelper-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in {**files, "scalehelper-0.1.dist-info/RECORD": record}.items():
            z.writestr(name, text)
    return wheel


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "model_service.py").write_text(SERVICE)
    (d / "weights.json").write_text('{"scale": 2}')
    (d / "requirements.txt").write_text(f"{make_wheel(tmp_path)}\n")
    d.chmod(0o555)  # mounted read-only in the sandbox: nothing may be written next to the model
    return d


def offline(tmp_path: Path) -> dict[str, str]:
    return {"PIP_NO_INDEX": "1", "CAPSTAN_DEPS_DIR": str(tmp_path / "deps")}


def test_predict(start_engine: Any, model_dir: Path, tmp_path: Path) -> None:
    engine = start_engine("generic", ["--model-dir", str(model_dir)], env=offline(tmp_path)).wait_ready()
    r = httpx.post(engine.url + "/v1/models/m:predict", json={"x": [1, 2.5]})
    assert r.status_code == 200 and r.json() == {"y": [6, 15.0]}
    assert httpx.get(engine.url + "/health").json()["model_class"] == "Model"
    assert engine.terminate() == 0  # SIGTERM: a clean stop


def test_refusals_and_model_failures(start_engine: Any, model_dir: Path, tmp_path: Path) -> None:
    engine = start_engine("generic", ["--model-dir", str(model_dir)], env=offline(tmp_path)).wait_ready()
    url = engine.url + "/v1/models/m:predict"
    for content in (b"{nope", b"[1]"):
        r = httpx.post(url, content=content)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.post(url, content=b"x" * (5 * 1024 * 1024)).status_code == 413
    for body, says in (({"crash": 1}, "ValueError: asked to crash"), ({"x": "object"}, "not JSON-serialisable"),
                       ({}, "KeyError")):
        r = httpx.post(url, json=body)
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["type"] == "model_error" and error["message"].startswith("the model's code failed")
        assert says in error["message"]
    assert httpx.get(engine.url + "/v1/chat/completions").status_code == 404
    assert httpx.post(url, json={"x": [1]}).json() == {"y": [6]}  # still serving


def test_requirements_that_cannot_install_fail_the_start_clearly(start_engine: Any, tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model_service.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    (d / "requirements.txt").write_text("capstan-no-such-package-anywhere==9.9\n")
    engine = start_engine("generic", ["--model-dir", str(d)], env=offline(tmp_path))
    assert engine.proc.wait(120) == 2
    out = engine.output()
    assert "requirements.txt could not be installed" in out and "capstan-no-such-package-anywhere" in out


def test_unwritable_deps_dir(start_engine: Any, model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a directory under a file cannot be made, whoever runs this
    engine = start_engine("generic", ["--model-dir", str(model_dir), "--deps-dir", str(blocker / "deps")],
                          env={"PIP_NO_INDEX": "1"})
    assert engine.proc.wait(60) == 2
    assert "is not writable" in engine.output() and "CAPSTAN_DEPS_DIR" in engine.output()


@pytest.mark.parametrize(("source", "says"), [
    (None, "does not exist"),
    ("class A:\n    def predict(self, x): return x\nclass B:\n    def predict(self, x): return x\n", "several"),
    ("class A:\n    pass\n", "no class with a predict() method"),
])
def test_bad_model_service(start_engine: Any, tmp_path: Path, source: str | None, says: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    if source is not None:
        (d / "model_service.py").write_text(source)
    engine = start_engine("generic", ["--model-dir", str(d)], env=offline(tmp_path))
    assert engine.proc.wait(60) == 2
    assert says in engine.output()


def test_load_failure_exits_with_the_reason(start_engine: Any, tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model_service.py").write_text("class Model:\n    def load(self):\n        raise RuntimeError('no weights')\n"
                                        "    def predict(self, x):\n        return x\n")
    engine = start_engine("generic", ["--model-dir", str(d)], env=offline(tmp_path))
    assert engine.proc.wait(60) == 3
    assert "RuntimeError: no weights" in engine.output()
