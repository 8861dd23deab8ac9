"""The sitecustomize hook that makes PyTorch honour CAPSTAN_GPU_MEMORY_FRACTION without user changes:
in plain subprocesses against real torch (CPU build: no GPU here, so the two torch.cuda functions the
hook calls are replaced by recording fakes), and inside a real bwrap sandbox started by the agent."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from capstan_agentkit.sandbox import InstancePaths, InstanceSpec
from capstan_agentkit.sandbox.argv import (
    BUILTIN_PACKAGES_MOUNT,
    PYHOOK_DIR,
    PYHOOK_MOUNT,
    build_bwrap_argv,
    builtin_package_dirs,
)
from capstan_proto import common_pb2, trainer_pb2

ROOT = Path(__file__).resolve().parents[3]
# The platform's runtimes (engines, fine-tuning) are on the sandbox's path when installed from a checkout.
BUILTIN = [BUILTIN_PACKAGES_MOUNT] if builtin_package_dirs() else []


def run_python(code: str, *, fraction: str | None, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAPSTAN_GPU_MEMORY_FRACTION")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (pythonpath or [PYHOOK_DIR]))
    if fraction is not None:
        env["CAPSTAN_GPU_MEMORY_FRACTION"] = fraction
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120, cwd="/")


def last_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


def test_the_hook_queues_the_fraction_for_every_visible_device() -> None:
    result = run_python("""
        import json, sys
        import sitecustomize as hook
        state = {"active": hook.ACTIVE, "fraction": hook.FRACTION, "torch_before": "torch" in sys.modules}
        import torch
        ours = [c for c, _ in torch.cuda._queued_calls if getattr(c, "__module__", "") == "sitecustomize"]
        state["queued"] = len(ours)
        state["cuda_initialised"] = torch.cuda.is_initialized()
        recorded = []
        def fake_set_per_process_memory_fraction(fraction, device=None):
            recorded.append([fraction, device])
        def fake_device_count():
            return 3
        torch.cuda.set_per_process_memory_fraction = fake_set_per_process_memory_fraction
        torch.cuda.device_count = fake_device_count
        for call in ours:  # what torch runs at CUDA initialisation
            call()
        state["recorded"], state["applied"] = recorded, hook.APPLIED
        state["loader_restored"] = type(torch.__spec__.loader).__name__ != "_AfterExec"
        print(json.dumps(state))
    """, fraction="0.3")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == {
        "active": True, "fraction": 0.3, "torch_before": False, "queued": 1, "cuda_initialised": False,
        "recorded": [[0.3, 0], [0.3, 1], [0.3, 2]], "applied": [0, 1, 2], "loader_restored": True,
    }


def test_without_a_fraction_the_hook_does_nothing() -> None:
    result = run_python("""
        import json, sys
        import sitecustomize as hook
        import torch
        ours = [c for c, _ in torch.cuda._queued_calls if getattr(c, "__module__", "") == "sitecustomize"]
        watchers = [f for f in sys.meta_path if type(f).__module__ == "sitecustomize"]
        print(json.dumps([hook.ACTIVE, len(ours), len(watchers)]))
    """, fraction=None)
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == [False, 0, 0]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "half"])
def test_a_value_that_is_not_a_fraction_is_ignored_with_a_warning(value: str) -> None:
    result = run_python("import sitecustomize as hook; print(hook.ACTIVE)", fraction=value)
    assert result.returncode == 0 and result.stdout.strip() == "False"
    assert "ignoring CAPSTAN_GPU_MEMORY_FRACTION" in result.stderr


def test_the_hook_never_imports_torch_itself() -> None:
    result = run_python("import json, sys, sitecustomize as hook; print(json.dumps([hook.ACTIVE, 'torch' in sys.modules]))",
                        fraction="0.5")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == [True, False]


def test_the_hook_does_not_break_when_torch_is_absent() -> None:
    result = run_python("""
        import json, sys
        sys.path[:] = [p for p in sys.path if "site-packages" not in p]  # no torch to be found
        import sitecustomize as hook
        try:
            import torch  # noqa: F401
            outcome = "imported"
        except ModuleNotFoundError as e:
            outcome = e.name
        import email.message  # other imports go on as usual
        print(json.dumps([hook.ACTIVE, outcome]))
    """, fraction="0.5")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == [True, "torch"]
    assert result.stderr == ""


def test_the_hook_chains_to_the_sitecustomize_it_shadows(tmp_path: Path) -> None:
    other = tmp_path / "site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\nMARK = 'theirs'\n")
    for fraction in ("0.5", None):
        result = run_python("""
            import json, os, sitecustomize as hook
            print(json.dumps([hook.ACTIVE, os.environ.get("CHAINED"), hook.chained.MARK]))
        """, fraction=fraction, pythonpath=[PYHOOK_DIR, other])
        assert result.returncode == 0, result.stderr
        assert last_json(result.stdout) == [fraction is not None, "yes", "theirs"]


def test_the_sandbox_gets_the_hook_only_with_a_fraction(tmp_path: Path) -> None:
    paths = InstancePaths.under(tmp_path, "train-x", 0)
    with_fraction = build_bwrap_argv("bwrap", InstanceSpec(
        task_id="train-x", instance_index=0, command="true", env={"CAPSTAN_GPU_MEMORY_FRACTION": "0.5"}), paths)
    i = with_fraction.index("--ro-bind", with_fraction.index("/opt/ml/input/config"))
    assert with_fraction[i:i + 3] == ["--ro-bind", str(PYHOOK_DIR), PYHOOK_MOUNT]
    j = with_fraction.index("PYTHONPATH")
    assert with_fraction[j - 1:j + 2] == ["--setenv", "PYTHONPATH", ":".join([PYHOOK_MOUNT, *BUILTIN])]
    plain = build_bwrap_argv("bwrap", InstanceSpec(task_id="train-x", instance_index=0, command="true"), paths)
    assert str(PYHOOK_DIR) not in plain and PYHOOK_MOUNT not in " ".join(plain)


def test_the_device_check_script_parses_and_imports() -> None:
    script = ROOT / "scripts" / "device_check_gpu_fraction.py"
    py_compile.compile(str(script), doraise=True)
    spec = importlib.util.spec_from_file_location("device_check_gpu_fraction", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # module level only: the check itself runs under __main__
    assert callable(module.main) and Path(module.HOOK_DIR) == PYHOOK_DIR


# -- inside a real sandbox, started by the agent --------------------------------------------------------
SHOW_HOOK = (
    "python3 -c \"import json, os, sys, sitecustomize as s; "
    "print('hook=' + json.dumps([s.ACTIVE, s.FRACTION, 'torch' in sys.modules, os.environ.get('PYTHONPATH', '')]))\""
)


@pytest.fixture
async def gpu_node(platform: Any) -> tuple[Any, str]:
    rg = await platform.group("gpu")
    await platform.agent(rg, "gpu-0", node_cpu=4, node_memory_gib=8, node_gpus="A100:1", reconcile_s=0.3)
    return platform, rg


async def _hook_line(platform: Any, rg: str, gpu: float) -> list[Any]:
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="hook", resource_group_id=rg, command=SHOW_HOOK,
        resources=common_pb2.Resources(cpu=1, memory_gib=1, gpu_type="A100", gpu=gpu)))
    got = await platform.wait(task.id, "Succeeded", "Failed", timeout=30)
    lines = await platform.lines(task.id)
    assert got.status == "Succeeded", (got.failure_reason, lines)
    (line,) = [ln for ln in lines if ln.startswith("hook=")]
    return list(json.loads(line.removeprefix("hook=")))


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_a_sandboxed_instance_with_part_of_a_card_has_the_hook_active(gpu_node: tuple[Any, str]) -> None:
    platform, rg = gpu_node
    assert await _hook_line(platform, rg, gpu=0.5) == [True, 0.5, False, ":".join([PYHOOK_MOUNT, *BUILTIN])]
    # a whole card: no fraction, so the sandbox's python finds no hook of ours (sitecustomize may not exist)
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="whole", resource_group_id=rg, resources=common_pb2.Resources(cpu=1, memory_gib=1, gpu_type="A100", gpu=1),
        command="python3 -c \"import os; print('pythonpath=[' + os.environ.get('PYTHONPATH', '') + ']')\""))
    got = await platform.wait(task.id, "Succeeded", "Failed", timeout=30)
    lines = await platform.lines(task.id)
    assert got.status == "Succeeded" and f"pythonpath=[{':'.join(BUILTIN)}]" in lines, lines
