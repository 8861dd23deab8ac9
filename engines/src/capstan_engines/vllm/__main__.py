"""``python -m capstan_engines.vllm --model-dir D --port P [--served-model-name N]``: build ``vllm serve``'s
argv from SPEC 6.6's env vars (``flags``) and exec it. ``--print-argv`` prints it instead."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import flags


def model_config(model_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((model_dir / "config.json").read_text()))
    except (OSError, ValueError):
        return {}


def model_context(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return None


def visible_gpus() -> int:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return max(1, len([d for d in devices.split(",") if d.strip()]))
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def installed_quantization() -> frozenset[str]:
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        return frozenset(QUANTIZATION_METHODS)
    except ImportError:
        return flags.VLLM_0_33_QUANTIZATION


def generation_config_dir(model_dir: Path, stop_ids: tuple[int, ...], root: Path) -> Path:
    """A generation config (the model's own, plus the family's stop ids as eos_token_id) for
    ``--generation-config``: vLLM stops at every eos_token_id it lists. The model dir is read-only."""
    try:
        config = dict(json.loads((model_dir / "generation_config.json").read_text()))
    except (OSError, ValueError):
        config = {}
    eos = config.get("eos_token_id")
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    config["eos_token_id"] = ids + [i for i in stop_ids if i not in ids]
    root.mkdir(parents=True, exist_ok=True)
    (root / "generation_config.json").write_text(json.dumps(config, indent=1))
    return root


def serve_argv(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    env = {"MODEL": str(args.model_dir), **env}
    model_dir = Path(env["MODEL"])
    config = model_config(model_dir)
    built = flags.build(env, port=args.port, served_model_name=args.served_model_name, gpus=visible_gpus(),
                        model_context=model_context(config), quantization_methods=installed_quantization())
    argv = list(built.argv)
    if built.family and built.family.stop_token_ids:
        gen = generation_config_dir(model_dir, built.family.stop_token_ids,
                                    Path(tempfile.gettempdir()) / f"capstan-vllm-genconfig-{os.getpid()}")
        argv += ["--generation-config", str(gen)]
    if args.host:
        argv[argv.index("--host") + 1] = args.host
    return argv


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m capstan_engines.vllm", description=__doc__)
    p.add_argument("--model-dir", type=Path, default=Path(flags.DEFAULT_MODEL))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--print-argv", action="store_true", help="print the vllm argv as JSON instead of running it")
    args = p.parse_args(argv)
    try:
        serve = serve_argv(args, dict(os.environ))
    except flags.UnsupportedSetting as e:
        print(f"capstan vllm runtime: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    exe = shutil.which("vllm")
    command = [exe, "serve", *serve] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *serve]
    if args.print_argv:
        print(json.dumps(command))
        return
    if importlib.util.find_spec("vllm") is None:
        print("capstan vllm runtime: vLLM is not installed in this environment (it needs a GPU machine); install "
              "the 'vllm' extra of capstan-engines or choose the transformers runtime", file=sys.stderr)
        raise SystemExit(2)
    sys.stdout.flush()
    os.execv(command[0], command)  # noqa: S606 - an argv list, replacing this process


if __name__ == "__main__":
    main()
