"""Policies (pure): presets, wildcards, deny wins, tag conditions, and the action table's shape."""

from __future__ import annotations

import pytest

from capstan_core import actions, authz
from capstan_core.authz import FULL_ACCESS, READ_ONLY_ACCESS, RESOURCE_GROUP_FULL_ACCESS, Policy, decide


def test_presets() -> None:
    assert decide([FULL_ACCESS], "trainer:DeleteTrainingTask", "train:train-1").allowed
    assert decide([READ_ONLY_ACCESS], "trainer:GetTrainingTask", "train:train-1").allowed
    assert not decide([READ_ONLY_ACCESS], "trainer:CreateTrainingTask", "train:*").allowed
    assert decide([RESOURCE_GROUP_FULL_ACCESS], "scheduler:DeleteResourceGroup", "rsg:rsg-1").allowed
    assert decide([RESOURCE_GROUP_FULL_ACCESS], "trainer:ListTrainingTasks", "train:*").allowed
    assert not decide([RESOURCE_GROUP_FULL_ACCESS], "trainer:StopTrainingTask", "train:train-1").allowed
    assert not decide([], "trainer:GetTrainingTask", "train:train-1").allowed


def test_wildcards_and_deny_wins() -> None:
    p = Policy("p", authz.parse_statements([
        {"effect": "allow", "actions": ["trainer:*"], "resources": ["train:train-a*"]},
        {"effect": "deny", "actions": ["trainer:Delete*"]},
    ]))
    assert decide([p], "trainer:StopTrainingTask", "train:train-abc").allowed
    assert not decide([p], "trainer:StopTrainingTask", "train:train-bcd").allowed
    assert not decide([p], "trainer:DeleteTrainingTask", "train:train-abc").allowed
    assert not decide([p, FULL_ACCESS], "trainer:DeleteTrainingTask", "train:train-abc").allowed  # deny wins
    literal = Policy("l", authz.parse_statements([{"effect": "allow", "actions": ["*"], "resources": ["rsg:[ab]"]}]))
    assert decide([literal], "scheduler:GetResourceGroup", "rsg:[ab]").allowed
    assert not decide([literal], "scheduler:GetResourceGroup", "rsg:a").allowed  # '[' is not a set


def test_tag_conditions_apply_only_to_objects_carrying_the_tags() -> None:
    p = Policy("t", authz.parse_statements([{"effect": "allow", "actions": ["trainer:*"], "tags": {"team": "a"}}]))
    assert decide([p], "trainer:GetTrainingTask", "train:t-1", {"team": "a", "x": "y"}).allowed
    assert not decide([p], "trainer:GetTrainingTask", "train:t-1", {"team": "b"}).allowed
    assert not decide([p], "trainer:GetTrainingTask", "train:t-1", {}).allowed
    assert not decide([p], "trainer:ListTrainingTasks", "train:*", None).allowed
    deny = Policy("d", authz.parse_statements([{"effect": "deny", "actions": ["*"], "tags": {"frozen": "yes"}}]))
    assert decide([deny, FULL_ACCESS], "trainer:ListTrainingTasks", "train:*").allowed
    assert not decide([deny, FULL_ACCESS], "trainer:StopTrainingTask", "train:t", {"frozen": "yes"}).allowed


@pytest.mark.parametrize("bad", [
    [], "x", [{"effect": "allow"}], [{"effect": "perhaps", "actions": ["*"]}],
    [{"effect": "allow", "actions": ["trainer:NoSuchThing"]}], [{"effect": "allow", "actions": ["*"], "extra": 1}],
    [{"effect": "allow", "actions": ["*"], "tags": {"k": 1}}], [{"effect": "allow", "actions": [""]}],
    [{"effect": "allow", "actions": ["*"]}] * 51,
])
def test_bad_statements_are_refused_with_a_reason(bad: object) -> None:
    with pytest.raises(ValueError):
        authz.parse_statements(bad)


def test_the_action_table() -> None:
    assert all(a.name.count(":") == 1 and a.access in ("read", "write") for a in actions.REST.values())
    assert len({a.name for a in actions.REST.values()}) == len(actions.REST)  # one name per route
    assert actions.rest_action("GET", "/api/v1/training-tasks/{id}/outputs/{path:path}") is not None
    assert actions.rest_action("GET", "/api/v1/nope") is None
    assert actions.grpc_action("/capstan.v1.Trainer/CreateTrainingTask") == "trainer:CreateTrainingTask"
