"""Drive a real platform started by ``capstan up`` (separate processes), as the durability tests do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from capstan_core.db import make_engine, table_digest
from capstan_core.natsserver import free_port

BIN = Path(sys.executable).parent
SERVICES = ("scheduler", "trainer", "registry", "inference")


def cli(*args: str, data_dir: Path, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "capstan"), "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"capstan {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Platform:
    data_dir: Path
    port: int

    @classmethod
    def up(cls, data_dir: Path) -> Platform:
        port = free_port()
        cli("up", "--port", str(port), data_dir=data_dir, timeout=180)
        return cls(data_dir, port)

    def down(self) -> None:
        cli("down", data_dir=self.data_dir, check=False)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        token = (self.data_dir / "admin-token").read_text().strip()
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    @property
    def nats_url(self) -> str:
        ports = json.loads((self.data_dir / "run" / "ports.json").read_text())
        return f"nats://127.0.0.1:{ports['nats']}"

    @property
    def default_rg(self) -> str:
        return (self.data_dir / "run" / "default-rg").read_text().strip()

    def pid(self, component: str) -> int:
        return int((self.data_dir / "run" / f"{component}.pid").read_text().strip())

    def kill9(self, component: str) -> None:
        pid = self.pid(component)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return
            time.sleep(0.05)
        raise AssertionError(f"{component} (pid {pid}) survived SIGKILL")

    def terminate(self, component: str) -> None:
        pid = self.pid(component)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and not _zombie(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"{component} did not stop on SIGTERM")
            time.sleep(0.05)

    def restart(self, component: str) -> None:
        cli("restart-component", component, data_dir=self.data_dir, timeout=120)

    def submit(self, command: str, name: str = "task", **extra: Any) -> dict[str, Any]:
        body = {"name": name, "resource_group_id": self.default_rg, "command": command,
                "resources": {"cpu": 0.5, "memory_gib": 0.5}, **extra}
        with self.client() as c:
            r = c.post("/api/v1/training-tasks", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def task(self, task_id: str) -> dict[str, Any]:
        """The task as the API shows it; retries while the gateway or the trainer is restarting."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.client() as c:
                    r = c.get(f"/api/v1/training-tasks/{task_id}")
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"cannot read task {task_id}")
            time.sleep(0.2)

    def wait_status(self, task_id: str, statuses: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            t = self.task(task_id)
            if t["status"] in statuses:
                return t
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} stuck in {t['status']} (wanted {statuses})")
            time.sleep(0.2)

    def logs(self, task_id: str) -> list[str]:
        with self.client() as c:
            r = c.get(f"/api/v1/training-tasks/{task_id}/logs")
        assert r.status_code == 200, r.text
        return [ln["line"] for ln in r.json()["lines"]]

    def db_url(self, service: str) -> str:
        return f"sqlite:///{self.data_dir / (service + '.db')}"

    def digest(self, service: str, url: str | None = None) -> tuple[str, int]:
        engine = make_engine(url or self.db_url(service))
        try:
            with engine.connect() as conn:
                from sqlalchemy import text

                pos = conn.execute(text("SELECT position FROM projection_positions")).scalar() or 0
            return table_digest(engine), int(pos)
        finally:
            engine.dispose()

    def rebuild(self, service: str, database_url: str | None = None) -> str:
        env = {**os.environ, "CAPSTAN_NATS_URL": self.nats_url, "CAPSTAN_DATA_DIR": str(self.data_dir)}
        if database_url:
            env["CAPSTAN_DATABASE_URL"] = database_url
        proc = subprocess.run([str(BIN / f"capstan-{service}"), "rebuild"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_service(api: httpx.Client, sid: str, ok: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = 300, check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Poll online service ``sid`` until ``ok(view)``; a Failed service, a failing ``check`` or the
    deadline raise with what the service shows (and its last log lines when it failed)."""
    deadline = time.monotonic() + timeout
    while True:
        svc = api.get(f"/api/v1/services/{sid}").json()
        if ok(svc):
            return svc  # type: ignore[no-any-return]
        if check is not None:
            try:
                check()
            except AssertionError as exc:
                raise AssertionError(f"{what}: {exc}\nservice: {svc}\nevents: "
                                     f"{api.get(f'/api/v1/services/{sid}/events').json()}") from None
        if svc.get("status") == "Failed":
            lines = api.get(f"/api/v1/services/{sid}/logs").json().get("lines", [])
            raise AssertionError(f"{what}: the service failed: {svc}\n" + "\n".join(x["line"] for x in lines[-60:]))
        assert time.monotonic() < deadline, f"{what}: {svc}"
        time.sleep(0.25)
