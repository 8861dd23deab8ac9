"""Incremental cycles (issue #11): a cycle decides only the groups whose input changed, with the same
decisions a cycle from scratch makes."""

from __future__ import annotations

from typing import Any

import pytest

from capstan_scheduler import reconcile

from .test_loop_isolation import Env, env  # noqa: F401 - the fixture


async def test_only_changed_groups_are_decided_and_a_full_cycle_adds_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    decided: list[str] = []
    real = reconcile.schedule_isolating

    def counting(plan: Any, now: int, **kw: Any) -> Any:
        decided.append(plan.resource_group)
        return real(plan, now, **kw)

    monkeypatch.setattr(reconcile, "schedule_isolating", counting)
    a, _ = await env.group("a")
    b, _ = await env.group("b")
    await env.sched.cycle()  # the first decides every group
    assert set(decided) == {a, b}

    decided.clear()
    await env.sched.cycle()  # nothing changed
    assert decided == []

    await env.submit("train-a1", a)
    decided.clear()
    await env.sched.cycle()  # admitted and placed in one cycle; only its group was decided
    assert env.workload("train-a1")[0] == "placed"
    assert decided == [a]

    decided.clear()
    await env.sched.cycle()  # its own decision does not make the group change
    assert decided == []

    before = await env.app.ctx.store.last_seq()
    await env.sched.cycle(full=True)  # from scratch: every group, and nothing was left undecided
    assert set(decided) == {a, b}
    assert await env.app.ctx.store.last_seq() == before
