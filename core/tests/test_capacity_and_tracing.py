"""Node capacity detection, and OTLP export switched on by the standard environment variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from capstan_core.capacity import detect, parse_gpus, parse_nvidia_smi_list


def test_nvidia_smi_listing_is_counted_by_card_type() -> None:
    out = (
        "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)\n"
        "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-2)\n"
        "GPU 2: Tesla T4 (UUID: GPU-3)\n"
        "  MIG 1g.10gb Device 0: (UUID: MIG-4)\n"
        "GPU 3: NVIDIA H200 (UUID: GPU-5)\n"
    )
    assert parse_nvidia_smi_list(out) == {"A100": 2, "T4": 1, "H200": 1}
    assert parse_nvidia_smi_list("") == {}


def test_declared_gpus_are_simulated_and_detection_finds_this_machine() -> None:
    cap = detect(cpu=8, memory_gib=32, gpus="A100:8,T4:2")
    assert cap.gpus == {"A100": 8, "T4": 2} and cap.simulated_gpus and cap.cpu == 8
    real = detect()
    assert real.cpu == float(os.cpu_count() or 1) and real.memory_gib > 0 and not real.simulated_gpus
    with pytest.raises(ValueError, match="A100:8"):
        parse_gpus("A100")


def test_otlp_exporter_is_installed_when_an_endpoint_is_configured() -> None:
    code = (
        "from capstan_core import tracing; from opentelemetry import trace\n"
        "tracing.setup_tracing('probe')\n"
        "p = trace.get_tracer_provider()\n"
        "names = [type(getattr(sp, 'span_exporter', None)).__name__ for sp in p._active_span_processor._span_processors]\n"
        "print(','.join(names))\n"
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "OTLPSpanExporter" in out.stdout, out.stderr
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "OTLPSpanExporter" not in out.stdout, out.stderr
