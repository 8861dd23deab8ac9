"""How ``DeepspeedZeroStage`` and the tensor/pipeline parallel sizes map onto what the installed
libraries really do on the hardware present, or why they cannot (a clear refusal before any work).

- ZeRO partitions optimizer state (z2: and gradients; z3: and parameters) across data-parallel
  processes. With ONE process there is nothing to partition: every stage trains like z0, and the
  plan says so. ``*_offload`` moves optimizer state to host memory: on a machine without CUDA it
  is there already; with CUDA it needs DeepSpeed.
- With several processes (``torchrun``: ``WORLD_SIZE`` > 1), z0 is plain data parallel with
  PyTorch's DistributedDataParallel (gloo without CUDA, nccl with it). z2/z3 need DeepSpeed: where
  it is not importable the plan refuses and names the alternatives; where it is, the template does
  not drive it yet and says that instead (nothing is faked).
- Tensor and pipeline parallelism (the vendor's Tilearn hybrid sizes) have no engine for this
  template in the installed libraries: any size but 1 is refused.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    strategy: str  # "single" | "ddp"
    world_size: int
    backend: str = ""  # torch.distributed backend for ddp
    notes: list[str] = field(default_factory=list)


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def make_plan(stage: str, tp: int, pp: int, world_size: int, cuda: bool, has_deepspeed: bool) -> Plan:
    for key, size in (("TilearnHybridTPSize", tp), ("TilearnHybridPPSize", pp)):
        if size != 1:
            kind = "tensor" if key.endswith("TPSize") else "pipeline"
            raise PlanError(
                f"{key}={size}: {kind} parallelism has no engine in this template's libraries (torch, transformers, "
                f"peft; the vendor's Tilearn is not available); set {key} to 1 and scale with more processes (z0, DDP)"
            )
    offload = stage.endswith("_offload")
    notes: list[str] = []
    if world_size <= 1:
        if offload and cuda:
            if not has_deepspeed:
                raise PlanError(
                    f"DeepspeedZeroStage={stage}: offloading optimizer state from the GPU needs DeepSpeed, which is not "
                    "installed in this image; use z0/z2/z3 (one process: no partitioning needed) or an image with "
                    "deepspeed"
                )
            raise PlanError(f"DeepspeedZeroStage={stage}: DeepSpeed is installed but this template does not drive it yet; "
                            "use z0/z2/z3")
        if stage != "z0":
            notes.append(
                f"DeepspeedZeroStage={stage}: ZeRO partitions state across data-parallel processes; with one process "
                "there is nothing to partition, so this trains exactly like z0"
                + ("; without CUDA the optimizer state is in host memory already" if offload else "")
            )
        return Plan("single", 1, notes=notes)
    if stage == "z0":
        return Plan("ddp", world_size, backend="nccl" if cuda else "gloo",
                    notes=[f"DeepspeedZeroStage=z0 with {world_size} processes: DistributedDataParallel"])
    if not has_deepspeed:
        raise PlanError(
            f"DeepspeedZeroStage={stage} with {world_size} processes needs DeepSpeed, which is not installed in this "
            "image (its CUDA extensions do not build on this machine); use z0 (PyTorch DDP) or one process"
        )
    raise PlanError(
        f"DeepspeedZeroStage={stage} with {world_size} processes: DeepSpeed is installed but this template does not "
        "drive it yet; use z0 (PyTorch DDP)"
    )
