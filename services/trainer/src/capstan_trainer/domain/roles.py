"""Instance roles of the distributed modes (SPEC §3.4), in index order.

- ``DDP``: ``master`` (index 0, RANK 0) and ``worker``;
- ``MPI`` / ``Horovod``: ``launcher`` (index 0) and ``worker``;
- ``PS-Worker``: ``ps`` (>= 1) then ``worker`` (>= 1);
- ``Ray``: ``head`` (index 0) then up to five worker groups, ``worker`` or ``worker-<name>``.

Every instance of a task has the same resources (the scheduler places a gang of equal instances);
a worker group is a name and a count.
"""

from __future__ import annotations

import re

from capstan_core.errors import InvalidArgument

MAX_RAY_WORKER_GROUPS = 5
_GROUP = re.compile(r"^worker(-[a-z0-9][a-z0-9-]{0,30})?$")
_FIRST = {"DDP": "master", "MPI": "launcher", "Horovod": "launcher", "Ray": "head"}


def normalized_roles(mode: str, roles: dict[str, int], count: int) -> dict[str, int]:
    """The role counts, in index order, summing to ``count`` ({} for a plain task)."""
    if not mode:
        if roles:
            raise InvalidArgument("roles need a training mode", field="roles")
        return {}
    if any(n < 0 for n in roles.values()):
        raise InvalidArgument("a role's count must be >= 0", field="roles")
    if mode == "PS-Worker":
        if count < 2:
            raise InvalidArgument("PS-Worker needs at least 2 instances (ps and worker)", field="instance_count")
        got = roles or {"ps": 1, "worker": count - 1}
        if set(got) != {"ps", "worker"} or got["ps"] < 1 or got["worker"] < 1:
            raise InvalidArgument('PS-Worker roles are {"ps": >= 1, "worker": >= 1}', field="roles")
        out = {"ps": got["ps"], "worker": got["worker"]}
    else:
        first = _FIRST[mode]
        if mode == "Ray" and roles:
            groups = {k: v for k, v in roles.items() if k != first}
            if roles.get(first, 1) != 1 or not all(_GROUP.match(k) for k in groups) or \
                    len(groups) > MAX_RAY_WORKER_GROUPS:
                raise InvalidArgument(
                    f'Ray roles are {{"head": 1, "worker" or "worker-<name>": n, ...}}, at most '
                    f"{MAX_RAY_WORKER_GROUPS} worker groups", field="roles")
            out = {first: 1, **{k: groups[k] for k in sorted(groups) if groups[k]}}
        elif roles and (set(roles) - {first, "worker"} or roles.get(first, 1) != 1):
            raise InvalidArgument(f'{mode} roles are {{"{first}": 1, "worker": n}}', field="roles")
        else:
            out = {first: 1, **({"worker": count - 1} if count > 1 else {})}
            if roles:
                out = {first: 1, **({"worker": roles["worker"]} if roles.get("worker") else {})}
    if sum(out.values()) != count:
        raise InvalidArgument(
            f"the roles ({', '.join(f'{k}: {v}' for k, v in out.items())}) add up to {sum(out.values())} "
            f"instances, not instance_count {count}", field="roles")
    return out


def role_of(roles: dict[str, int], index: int) -> tuple[str, int]:
    """(role, index within the role) of instance ``index``; ("", index) for a plain task."""
    start = 0
    for role, n in roles.items():
        if index < start + n:
            return role, index - start
        start += n
    return "", index
