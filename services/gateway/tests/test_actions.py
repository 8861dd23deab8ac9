"""Every REST route and every gRPC method has an action (capstan_core.actions); a missing one is named."""

from __future__ import annotations

import re

from capstan_core import actions, admin, grpcutil
from capstan_gateway.app import api_routes, missing_actions
from capstan_gateway.routers import routers
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_registry.service import DEFINITION as REGISTRY
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER


def test_every_rest_route_has_an_action() -> None:
    missing = missing_actions(routers())
    assert not missing, f"add these routes to capstan_core/actions.py (one _rest(...) line each): {missing}"
    routed = {(m, r.path) for m, r in api_routes(routers())}
    stale = [f"{m} {p}" for m, p in actions.REST if not any(
        m == rm and actions.rest_action(rm, rp) is actions.REST[(m, p)] for rm, rp in routed)]
    assert not stale, f"actions of routes that do not exist: {stale}"


def test_every_grpc_method_has_an_action() -> None:
    methods = set(grpcutil.BASE_ACCESS.methods()) | set(admin.ACCESS.methods())
    for definition in (SCHEDULER, TRAINER, REGISTRY, INFERENCE):
        methods |= set(definition.access.methods())
    names = {m: actions.grpc_action(m) for m in methods}
    bad = [m for m, n in names.items() if not re.fullmatch(r"[a-z]+:[A-Za-z]+", n)]
    assert not bad, f"gRPC methods without an action name: {bad}"
    assert names["/capstan.v1.Trainer/CreateTrainingTask"] == "trainer:CreateTrainingTask"
    # the user-facing methods a REST route calls carry the route's action name
    for name in ("trainer:CreateTrainingTask", "scheduler:CreateResourceGroup", "registry:CreateModel",
                 "scheduler:ShareResourceGroup", "trainer:StopTrainingTask", "registry:PublishVersion"):
        assert name in names.values() and name in actions.ACTION_NAMES, name
