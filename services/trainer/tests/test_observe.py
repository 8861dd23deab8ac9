"""Observing a task (SPEC §3.3): usage samples from the instance's cgroup over time, logs split into the
platform's and the code's, the task's events; checkpoints and evaluation results are read from its outputs."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.probe import missing
from capstan_proto import common_pb2, trainer_pb2

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or bool(missing(sandbox_testing.CONFIG)), reason="this machine cannot contain sandboxes")

# Holds ~200 MiB and burns CPU until it has been sampled a few times (the test waits on the samples).
BUSY = r"""python3 - <<'PY'
import json, time
block = bytearray(200 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
print("code says hello")
end = time.time() + 3
while time.time() < end:
    sum(range(10000))
open("/opt/ml/output/evaluation.json", "w").write(json.dumps({"accuracy": 0.93}))
PY"""


async def test_samples_logs_split_and_events(platform: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_SANDBOX_METRICS_S", "0.5")  # the runners the agent starts sample this often
    rg = await platform.group("observe")
    await platform.agent(rg, "obs-0", reconcile_s=0.3)
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="busy", resource_group_id=rg, command=BUSY, resources=common_pb2.Resources(cpu=1, memory_gib=1)))
    got = await platform.wait(task.id, "Succeeded", "Failed", timeout=60)
    assert got.status == "Succeeded", got.failure_reason

    async def lines(source: str) -> list[trainer_pb2.LogLine]:
        resp = await platform.t.GetLogs(trainer_pb2.GetLogsRequest(task_id=task.id, instance_index=-1, source=source))
        return list(resp.lines)

    samples = [json.loads(ln.line) for ln in await lines("metrics")]
    assert len(samples) >= 3
    assert max(s["memory_bytes"] for s in samples) > 150 * 2**20  # the 200 MiB it holds
    assert all(0 <= s["memory_percent"] <= 100 for s in samples)
    assert max(s["cpu_cores"] for s in samples) > 0.2 and all(s["cpu_cores"] <= 1.5 for s in samples)
    code = {ln.stream for ln in await lines("code")}
    assert code <= {"stdout", "stderr"} and "code says hello" in [ln.line for ln in await lines("code")]
    platform_lines = [ln.line for ln in await lines("platform")]
    assert any(ln.startswith("contained:") for ln in platform_lines) and "code says hello" not in platform_lines
    assert all(ln.stream != "metrics" for ln in await lines(""))  # the default: platform and code, no samples
    events = (await platform.t.ListTaskEvents(trainer_pb2.ListTaskEventsRequest(task_id=task.id))).items
    assert [e.type for e in events] == [
        "TrainingTaskSubmitted", "TrainingInstanceStarted", "TrainingInstanceExited", "TrainingTaskEnded"]
    assert events[-1].message == "Succeeded" and events[-1].level == "info"
    assert json.loads(await platform.output(task.id, 0, "output/evaluation.json")) == {"accuracy": 0.93}
