"""Distributed modes (SPEC §3.4), each a real multi-instance run: two or three trainer agents as nodes
of one machine, each instance in its own sandbox and network namespace on the task's bridge."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import pytest

from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.probe import missing
from capstan_proto import common_pb2, trainer_pb2

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(bool(missing(sandbox_testing.CONFIG)), reason="this machine cannot contain sandboxes"),
]


async def _nodes(platform: Any, n: int = 2) -> str:
    rg = await platform.group("dist")
    for i in range(n):
        await platform.agent(rg, f"node-{i}", node_cpu=2, node_memory_gib=6, reconcile_s=0.3)
    return rg


async def _run(platform: Any, rg: str, command: str, *, mode: str, count: int = 2, memory: float = 1,
               roles: dict[str, int] | None = None, timeout: float = 120, want: str = "Succeeded") -> Any:
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name=f"{mode or 'plain'}-run", resource_group_id=rg, command=command, instance_count=count, mode=mode,
        roles=roles or {}, role_order=list(roles or {}),
        resources=common_pb2.Resources(cpu=1, memory_gib=memory)))
    try:
        got = await platform.wait(task.id, "Succeeded", "Failed", "Stopped", timeout=timeout)
    except AssertionError as e:  # say what the instances said
        raise AssertionError(f"{e}; logs: {await platform.lines(task.id)}") from e
    if got.status != want:  # the failing instance's last lines may still be on their way: let them settle
        lines: list[str] = []
        for _ in range(50):
            if (now := await platform.lines(task.id)) == lines:
                break
            lines = now
            await asyncio.sleep(0.2)
        raise AssertionError((got.status, got.failure_reason, [(i.index, i.exit_code) for i in got.instances], lines))
    return got


ENV_CHECK = r"""python3 - <<'PY'
import json, os, socket
e = os.environ
out = {k: e.get(k) for k in ("INDEX", "RANK", "WORLD_SIZE", "NODE_LIST", "MASTER_ADDR", "MASTER_PORT", "GPU_NUM",
                             "GPU_NUM_PER_NODE", "CAPSTAN_ROLE", "CAPSTAN_ROLE_INDEX")}
tf = json.loads(e["TF_CONFIG"])
# Checked by the instance itself: its task entry is its own role, and every peer of the cluster resolves.
assert tf["task"] == {"type": e["CAPSTAN_ROLE"], "index": int(e["CAPSTAN_ROLE_INDEX"])}, tf
assert tf["environment"] == "cloud"
for hosts in tf["cluster"].values():
    for h in hosts:
        socket.gethostbyname(h.split(":")[0])
out["tf"] = tf
open("/opt/ml/output/env.json", "w").write(json.dumps(out))
PY"""


async def test_ps_worker_every_variable_and_tf_config_checked_by_the_instances(platform: Any) -> None:
    rg = await _nodes(platform)
    got = await _run(platform, rg, ENV_CHECK, mode="PS-Worker", count=3, roles={"ps": 1, "worker": 2})
    envs = [json.loads(await platform.output(got.id, i, "output/env.json")) for i in range(3)]
    cluster = {"ps": ["instance-0:2222"], "worker": ["instance-1:2222", "instance-2:2222"]}
    for i, env in enumerate(envs):
        assert env["tf"]["cluster"] == cluster
        assert (env["INDEX"], env["RANK"], env["WORLD_SIZE"]) == (str(i), str(i), "3")
        assert env["NODE_LIST"] == "instance-0:0,instance-1:0,instance-2:0"
        assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["GPU_NUM"], env["GPU_NUM_PER_NODE"]) == (
            "instance-0", "23456", "0", "0")
    assert [e["CAPSTAN_ROLE"] for e in envs] == ["ps", "worker", "worker"]
    assert [e["tf"]["task"]["index"] for e in envs] == [0, 0, 1]


DDP_TRAIN = r"""cat > train.py <<'PY'
import hashlib, os
import torch, torch.distributed as dist
dist.init_process_group("gloo")
torch.manual_seed(1234 + dist.get_rank())  # replicas start apart: DDP must make them equal
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(dist.get_rank())
for _ in range(20):
    x = torch.randn(16, 8, generator=g)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
digest = hashlib.sha256(str([p.detach().flatten().tolist() for p in model.parameters()]).encode()).hexdigest()
open(f"/opt/ml/output/weights-{dist.get_rank()}.sha", "w").write(digest)
print(f"rank {dist.get_rank()} of {dist.get_world_size()} loss {loss.item():.4f}")
# every rank is done before any leaves: a gloo peer that exits first can fail the other's shutdown
dist.barrier()
dist.destroy_process_group()
PY
torchrun --nproc_per_node 1 --nnodes $WORLD_SIZE --node_rank $RANK --master_addr $MASTER_ADDR \
  --master_port $MASTER_PORT train.py"""


async def test_ddp_torchrun_with_gloo_on_two_nodes_ends_with_identical_replicas(platform: Any) -> None:
    pytest.importorskip("torch")
    rg = await _nodes(platform)
    got = await _run(platform, rg, DDP_TRAIN, mode="DDP", memory=2, timeout=240)
    assert len({i.node_id for i in got.instances}) == 2  # two nodes, one instance each
    w0 = await platform.output(got.id, 0, "output/weights-0.sha")
    w1 = await platform.output(got.id, 1, "output/weights-1.sha")
    assert len(w0) == 64 and w0 == w1
    lines = await platform.lines(got.id)
    assert any("rank 0 of 2" in ln for ln in lines) and any("rank 1 of 2" in ln for ln in lines)


MPI_RUN = r"""echo "slots: $NODE_IP_SLOT_LIST"; cat /etc/mpi/hostfile
if [ "$INDEX" = 0 ]; then
  mpirun -np 2 --map-by node hostname
fi"""


async def test_mpi_mpirun_starts_its_ranks_in_both_instances(platform: Any) -> None:
    if shutil.which("mpirun") is None:
        pytest.skip("OpenMPI is not installed")
    rg = await _nodes(platform)
    got = await _run(platform, rg, MPI_RUN, mode="MPI", timeout=120)
    lines = await platform.lines(got.id)
    assert "instance-0 slots=1" in lines and "instance-1 slots=1" in lines
    slot_lines = [ln for ln in lines if ln.startswith("slots: ")]
    assert len(slot_lines) == 2 and all(ln.count(":1") == 2 for ln in slot_lines)
    # mpirun on the launcher ran one rank in each instance: each prints its own hostname.
    assert {"instance-0", "instance-1"} <= set(lines), lines


async def test_horovod_runs_the_command_on_the_launcher_only_and_workers_wait(platform: Any) -> None:
    rg = await _nodes(platform)
    got = await _run(platform, rg, 'echo "command ran on $INDEX"', mode="Horovod", timeout=90)
    lines = await platform.lines(got.id)
    assert [ln for ln in lines if ln.startswith("command ran")] == ["command ran on 0"]
    assert any("waiting until instance-0 is reachable" in ln for ln in lines)
    assert all(i.exit_code == 0 for i in got.instances)


async def test_any_instance_failing_fails_the_task_and_stops_the_rest(platform: Any) -> None:
    rg = await _nodes(platform)
    command = 'if [ "$INDEX" = 1 ]; then exit 3; fi; sleep 600'
    got = await _run(platform, rg, command, mode="DDP", want="Failed", timeout=90)
    assert "instance 1 exited with code 3" in got.failure_reason
    states: list[str] = []
    for _ in range(300):  # the master, which would sleep ten minutes, is stopped
        states = [a.executor.status(k, i).state for a in platform.agents for (k, i) in a.executor.list_instances()]
        if states and all(s == "exited" for s in states):
            break
        await asyncio.sleep(0.1)
    assert states and all(s == "exited" for s in states), states


RAY_RUN = r"""python3 - <<'PY'
import socket
import ray
ray.init()  # plain: the platform started the cluster
resources = ray.cluster_resources()
assert resources.get("Rank:0") == 1 and resources.get("Rank:1") == 1, resources


@ray.remote(num_cpus=0)
def where() -> str:
    return socket.gethostname()


print("pinned:", [ray.get(where.options(resources={f"Rank:{i}": 0.01}).remote()) for i in (0, 1)])
PY"""


async def test_ray_the_platform_starts_head_and_worker_and_rank_resources_pin_work(platform: Any) -> None:
    pytest.importorskip("ray")
    rg = await _nodes(platform)
    got = await _run(platform, rg, RAY_RUN, mode="Ray", memory=2, timeout=300)
    lines = await platform.lines(got.id)
    assert "pinned: ['instance-0', 'instance-1']" in lines, lines[-40:]
