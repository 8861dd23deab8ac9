"""Property checks of the service forms at the edge: whatever JSON a caller sends for a version's spec or
its autoscaling (NaN, infinities, huge numbers, wrong types, nested junk), it is refused with an
``InvalidArgument`` naming a field, or accepted with every number finite and inside its documented range."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capstan_core.errors import InvalidArgument
from capstan_inference.domain import autoscale, spec

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, 100, 500, 501, 86400, 86401, 0.5]),
    st.text(max_size=8), st.sampled_from(["UTC", "Asia/Shanghai", "../etc", "09:00", "* * * 1-7 10 *"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)
BASE = {"runtime": "custom", "command": "python3 -m http.server 8501", "resource_group_id": "rg-x"}


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return True


def _refused_by_field(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except InvalidArgument as e:
        assert str(e) and getattr(e, "field", None), e
        return None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(spec.FIELDS), VALUES, max_size=5),
       st.fixed_dictionaries({}, optional={
           "resources": st.fixed_dictionaries({}, optional={k: VALUES for k in ("cpu", "memory_gib", "gpu")}),
           "rate_limit": st.fixed_dictionaries({"kind": st.sampled_from(["qps", "concurrency", "none", 1])},
                                               optional={k: VALUES for k in ("value", "queue_size",
                                                                             "queue_timeout_ms")}),
       }))
def test_a_version_spec_is_refused_by_field_or_valid_in_range(junk: dict[str, Any], shaped: dict[str, Any]) -> None:
    raw = json.loads(json.dumps({**BASE, **junk, **shaped}))
    out = _refused_by_field(spec.normalize, raw)
    if out is None:
        return
    assert _finite_numbers(out)
    r = out["resources"]
    assert r["cpu"] > 0 and r["memory_gib"] > 0 and 0 <= r["gpu"]
    assert 1 <= out["replicas"] <= spec.MAX_REPLICAS and 1 <= out["grace_period_s"] <= spec.MAX_GRACE_S
    assert 0 <= out["max_surge_pct"] <= 100 and 0 <= out["max_unavailable_pct"] <= 100
    rl = out["rate_limit"]
    assert rl["kind"] in spec.RATE_LIMITS
    if rl["kind"] == "qps":
        assert 1 <= rl["value"] <= spec.GROUP_QPS_CAP
    assert 0 <= rl["queue_size"] <= spec.MAX_QUEUE and 0 <= rl["queue_timeout_ms"] <= spec.MAX_QUEUE_TIMEOUT_MS
    assert 1 <= out["port"] <= 65535


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"mode": st.sampled_from(["hpa", "time", "manual", "x", 1])},
                             optional={k: VALUES for k in ("metric", "target", "min", "max", "cooldown_s", "rules",
                                                           "default", "timezone")}),
       st.sampled_from(["none", "qps", "concurrency"]), st.sampled_from(["qps", "concurrency", "cpu", "memory", "gpu"]),
       st.sampled_from([0.0, 0.5, 2.0]))
def test_autoscaling_is_refused_by_field_or_valid_in_range(raw: dict[str, Any], kind: str, metric: str,
                                                           gpu: float) -> None:
    if raw.get("metric") is None:
        raw = {**raw, "metric": metric}
    out = _refused_by_field(autoscale.normalize, json.loads(json.dumps(raw)), rate_limit_kind=kind, gpu=gpu)
    if out is None or out["mode"] != "hpa":
        return
    assert math.isfinite(out["target"]) and out["target"] > 0
    assert 1 <= out["min"] <= out["max"] <= spec.MAX_REPLICAS and 0 <= out["cooldown_s"] <= 86400
