"""What an instance is told about the accelerator cards the scheduler gave it."""

from __future__ import annotations


def gpu_env(cards: list[tuple[int, int]], *, simulated: bool) -> dict[str, str]:
    """What an instance is told about the cards it holds (SPEC §7.3).

    ``CUDA_VISIBLE_DEVICES`` names the cards; a fraction of a card also gets
    ``CAPSTAN_GPU_MEMORY_FRACTION`` (e.g. 0.3), which the sandbox's sitecustomize hook
    (``sandbox/pyhook``) applies to PyTorch with ``torch.cuda.set_per_process_memory_fraction``
    as soon as user code imports torch. Declared (simulated) cards have no device:
    the instance sees none, and ``CAPSTAN_SIMULATED_GPUS=1`` says why.
    """
    if not cards:
        return {"CUDA_VISIBLE_DEVICES": ""}
    env = {"CAPSTAN_GPU_CARDS": ",".join(f"{i}:{t}" for i, t in cards)}
    if len(cards) == 1 and cards[0][1] < 10:
        env["CAPSTAN_GPU_MEMORY_FRACTION"] = f"{cards[0][1] / 10:g}"
    if simulated:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["CAPSTAN_SIMULATED_GPUS"] = "1"
    else:
        env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i, _ in cards)
    return env
