"""The ``capstan-gateway`` process: ready file once serving, /healthz, token file, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from capstan_core.natsserver import free_port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env.update(
        CAPSTAN_SECRETS_DIR=os.environ["CAPSTAN_SECRETS_DIR"],  # the session's certificates (conftest)
        CAPSTAN_DATA_DIR=str(tmp_path / "data"),
        CAPSTAN_HTTP_LISTEN="127.0.0.1:0",
        CAPSTAN_SCHEDULER_ADDR=f"127.0.0.1:{free_port()}",
        CAPSTAN_TRAINER_ADDR=f"127.0.0.1:{free_port()}",
    )
    env.update(extra)
    return env


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        assert proc.poll() is None, proc.communicate()[1].decode()
        time.sleep(0.05)
    raise AssertionError("the gateway did not write its ready file")


def test_process_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "gateway.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "capstan_gateway", "--ready-file", str(ready)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = _wait_for(ready, proc)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        token = (tmp_path / "data" / "admin-token").read_text()
        r = httpx.get(f"{url}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503  # authenticated; the scheduler is not running
        assert httpx.get(f"{url}/api/v1/nodes").status_code == 401
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err.decode()
        assert token not in err.decode()
        assert "gateway serving on" in err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_settings_fail_fast(tmp_path: Path) -> None:
    env = _env(tmp_path, CAPSTAN_HTTP_LISTEN="0.0.0.0:0", CAPSTAN_AUTH_DISABLED="true")
    proc = subprocess.run([sys.executable, "-m", "capstan_gateway"], env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert b"unauthenticated API beyond this machine" in proc.stderr
