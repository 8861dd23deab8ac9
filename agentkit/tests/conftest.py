"""Fixtures of the sandbox tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan_agentkit.sandbox import BwrapExecutor
from capstan_agentkit.sandbox import testing as sandbox_testing


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[BwrapExecutor]:
    """A contained executor with a name prefix and cgroup parent of its own; what it started is stopped after."""
    cfg = sandbox_testing.fresh()
    ex = BwrapExecutor(tmp_path / "instances", cfg)
    yield ex
    sandbox_testing.stop_all(ex, cfg)
