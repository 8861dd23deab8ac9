"""``python -m capstan_engines.transformers --model-dir DIR --port P``: serve a causal LM over OpenAI's API."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette

from ..http import serve
from .app import Engine, build_app
from .model import LoadedModel, cpu_budget, pick_device
from .scheduler import Scheduler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m capstan_engines.transformers", description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="a Hugging Face model directory")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside the instance's own network namespace
    p.add_argument("--served-model-name", default=None, help="the name callers use in 'model' (default: dir name)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences stepped together at most")
    p.add_argument("--max-waiting", type=int, default=512, help="requests queued at most before 503")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: the CPUs this process "
                   "may use, cgroup quota included)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long in-flight requests may finish")
    args = p.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        p.error(f"--model-dir {args.model_dir}: no config.json (not a Hugging Face model directory)")
    if not 1 <= args.max_batch <= 1024:
        p.error("--max-batch must be 1..1024")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or cpu_budget())
    model = LoadedModel(args.model_dir, pick_device(args.device))
    scheduler = Scheduler(model, max_batch=args.max_batch, max_waiting=args.max_waiting)
    engine = Engine(model, scheduler, args.served_model_name or args.model_dir.resolve().name)
    app = build_app(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        logging.getLogger("capstan_engines").info("serving %s on %s:%d (context %d tokens, batch %d)",
                                                  engine.served_name, args.host, args.port, model.context_length,
                                                  args.max_batch)
        yield
        scheduler.stop()

    app.router.lifespan_context = lifespan
    serve(app, args.host, args.port, args.drain_seconds)


if __name__ == "__main__":
    main()
