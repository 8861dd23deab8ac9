"""``python -m capstan_engines.generic --model-dir DIR --port P``: serve DIR/model_service.py (SPEC 6.7)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..http import serve
from . import deps
from .app import build_app
from .service import ModelService, ServiceError


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m capstan_engines.generic", description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside the instance's own network namespace
    p.add_argument("--served-model-name", default=None, help="accepted for a uniform argv; the route is fixed")
    p.add_argument("--deps-dir", type=Path, default=None,
                   help="where requirements.txt is installed (default: $CAPSTAN_DEPS_DIR or the temp dir)")
    p.add_argument("--drain-seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    log = logging.getLogger("capstan_engines.generic")
    try:
        deps.activate(deps.install(args.model_dir / "requirements.txt", args.deps_dir or deps.default_dir()))
        service = ModelService(args.model_dir)
    except (deps.DepsError, ServiceError) as e:
        print(f"capstan generic runtime: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # the user's module or load() raised: say so, with their traceback
        log.exception("model_service.py failed to load")
        print(f"capstan generic runtime: model_service.py failed to load: {type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    log.info("serving %s from %s on %s:%d", service.name, args.model_dir, args.host, args.port)
    serve(build_app(service), args.host, args.port, args.drain_seconds)


if __name__ == "__main__":
    main()
