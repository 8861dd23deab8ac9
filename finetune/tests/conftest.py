"""The tiny base model, built once per install (the cached step the flow and the demo share)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capstan_finetune import staging, tinygpt

ASSETS = Path(tinygpt.__file__).parent / "assets"


@pytest.fixture(scope="session")
def base_model() -> Path:
    return tinygpt.ensure_base_model(staging.models_root())
