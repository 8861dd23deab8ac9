"""``python -m capstan_finetune``: run the template with ``/opt/ml/input/config/hyperparameters.json``.

Other uses: ``--presets`` prints the hyperparameters with defaults and meanings; ``build-base DIR``
builds (or finds cached) the project's tiny base model under DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import hparams, tinygpt
from .data import DataError
from .parallel import PlanError
from .quiet import quiet_libraries
from .train import STOPPED_EXIT, Stopped, run


def _say(line: str) -> None:
    print(f"[finetune] {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m capstan_finetune", description=__doc__)
    p.add_argument("--hyperparameters", type=Path, default=hparams.HYPERPARAMETERS_FILE, help="a JSON object file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override one hyperparameter")
    p.add_argument("--presets", action="store_true", help="print the hyperparameters, defaults and meanings")
    p.add_argument("build_base", nargs="*", metavar="build-base DIR", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.presets:
        for pr in hparams.PRESETS:
            print(f"{pr.key:26} {json.dumps(pr.default):26} {pr.meaning}")
        return 0
    if a.build_base:
        if a.build_base[0] != "build-base" or len(a.build_base) != 2:
            p.error("usage: python -m capstan_finetune build-base DIR")
        print(tinygpt.ensure_base_model(Path(a.build_base[1]), _say))
        return 0
    quiet_libraries()
    try:
        overrides = {}
        for item in a.set:
            key, _, value = item.partition("=")
            overrides[key] = json.loads(value)
        cfg = hparams.load(a.hyperparameters, overrides)
        run(cfg, _say)
    except (hparams.HyperparameterError, DataError, PlanError, ValueError) as e:
        print(f"[finetune] error: {e}", file=sys.stderr, flush=True)
        return 2
    except Stopped as e:
        _say(str(e))
        return STOPPED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
