"""Trace-driven simulation of the scheduling core (issue #3, point 10): trace format, simulator, synthetic traces.

A recorded event log becomes a trace through ``capstan_scheduler.sim.eventlog`` (not imported here: it needs
NATS and the event contracts). See docs/simulation.md.
"""

from .engine import SimResult, Simulator, WaitStats, format_table, percentile, simulate
from .synthetic import generate
from .trace import (
    DEFAULT_POLICY,
    GroupSpec,
    NodeSpec,
    Trace,
    TraceError,
    WorkloadSpec,
    dumps,
    from_cpu_csv,
    load,
    loads,
    save,
)

__all__ = [
    "DEFAULT_POLICY", "GroupSpec", "NodeSpec", "SimResult", "Simulator", "Trace", "TraceError", "WaitStats",
    "WorkloadSpec", "dumps", "format_table", "from_cpu_csv", "generate", "load", "loads", "percentile", "save",
    "simulate",
]
