"""A hostile training task, on a real platform (`capstan up`), tries everything the security review
did from inside its sandbox: every attempt is blocked (see tests/hostile/attacks.py), the links it
plants in its outputs are not followed when its output is stored, and it is held to its limits."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .platform_harness import Platform

ATTACKS = (Path(__file__).parent / "hostile" / "attacks.py").read_text()
EXPECTED = {
    "nats-connect-publish-subscribe", "grpc-every-service-with-and-without-reflection", "read-admin-token-and-data-dir",
    "read-another-tasks-storage", "read-etc-shadow", "run-as-root", "exceed-the-process-limit",
    "plant-symlinks-in-outputs",
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform.up(tmp_path_factory.mktemp("hostile") / "data")
    try:
        yield p
    finally:
        p.down()


def test_every_attempt_from_inside_a_task_is_blocked(platform: Platform) -> None:
    victim = platform.submit("echo 'the victim output' > /opt/ml/output/secret.txt", name="victim")
    assert platform.wait_status(victim["id"], ("Succeeded", "Failed"))["status"] == "Succeeded"
    ports = json.loads((platform.data_dir / "run" / "ports.json").read_text())
    targets = {
        "nats_port": ports["nats"],
        "grpc_ports": {name: ports[name] for name in ("scheduler", "trainer", "registry", "inference", "bootstrap")},
        "data_dir": str(platform.data_dir), "victim": victim["id"], "processes": 300,
    }
    assert len(ATTACKS) < 8000  # it travels inside the command
    command = f"python3 - <<'CAPSTAN_EOF'\n{ATTACKS}\nCAPSTAN_EOF"
    task = platform.submit(command, name="hostile", hyperparameters=targets,
                           resources={"cpu": 0.1, "memory_gib": 0.5})
    done = platform.wait_status(task["id"], ("Succeeded", "Failed", "Stopped"), timeout=180)
    lines = platform.logs(task["id"])
    attempts = {ln.split()[1]: ln for ln in lines if ln.startswith("ATTEMPT ")}
    assert set(attempts) == EXPECTED, (done, lines)
    breaches = [ln for ln in attempts.values() if ln.split()[2] != "blocked"]
    assert breaches == [], breaches
    print("\n".join(attempts.values()))  # what each attempt met, for whoever reads the test's output

    # the links it left in /opt/ml/output and /opt/ml/model were not followed into storage
    stored = platform.data_dir / "storage" / "train" / task["id"]
    token = (platform.data_dir / "admin-token").read_text().strip()
    for root, dirs, files in os.walk(stored):
        for name in dirs + files:
            path = Path(root) / name
            assert not path.is_symlink(), path
            if path.is_file():
                assert token not in path.read_text(errors="replace"), path


def test_memory_beyond_the_request_ends_the_task_as_out_of_memory(platform: Platform) -> None:
    task = platform.submit("python3 -c 'x = bytearray(1536 << 20); print(len(x))'", name="greedy",
                           resources={"cpu": 0.5, "memory_gib": 0.5})
    done = platform.wait_status(task["id"], ("Succeeded", "Failed", "Stopped"), timeout=120)
    assert done["status"] == "Failed", done
    assert "out of memory" in done["failure_reason"] and "(limit 0.5 GiB)" in done["failure_reason"], done
