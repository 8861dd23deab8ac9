"""GPU samples: parsed from nvidia-smi. No GPU here, so a stand-in ``nvidia-smi`` (a FAKE, named as
such: it prints what the real one prints for these flags) answers; the real one is the same query."""

from __future__ import annotations

from pathlib import Path

import pytest

from capstan_agentkit.sandbox.gpustats import gpu_samples

FAKE = """#!/bin/sh
# FAKE nvidia-smi for tests: answers the one query the sampler makes, for the cards asked (-i)
[ "$1" = "--query-gpu=index,utilization.gpu,memory.used,memory.total" ] || exit 9
[ "$2" = "--format=csv,noheader,nounits" ] || exit 9
[ "$4" = "0,3" ] || exit 9
echo "0, 35, 20480, 81559"
echo "3, [N/A], 1024, 81559"
"""


def test_samples_per_card_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_samples("0,3") == [{"index": 0, "gpu_percent": 35.0, "memory_bytes": 20480 << 20,
                                   "memory_percent": 25.1}]  # a card reporting N/A is left out
    assert gpu_samples("") == []
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert gpu_samples("0") == []
