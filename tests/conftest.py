"""Fixtures of the whole-platform tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .platform_harness import Platform


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """A platform started by ``capstan up`` in the test's own data dir, stopped after it (a module may
    define its own, e.g. one per module)."""
    p = Platform.up(tmp_path / "data")
    try:
        yield p
    finally:
        p.down()
