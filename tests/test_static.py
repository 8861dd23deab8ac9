"""House rules checked in CI: ruff and mypy clean (STYLE.md habit 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOURCES = ["core/src", "agentkit/src", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/src")), "cli/src", "finetune/src", "engines/src"]


def test_ruff_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean(tmp_path: Path) -> None:
    # A fresh cache each run: an incremental cache from before a regeneration of the gRPC code
    # reports modules that exist as missing.
    result = subprocess.run(
        [str(BIN / "mypy"), "--ignore-missing-imports", "--cache-dir", str(tmp_path / "mypy"), *SOURCES],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
