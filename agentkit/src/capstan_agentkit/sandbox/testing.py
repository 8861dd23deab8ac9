"""Containment settings for tests, and a look for what they left behind.

Test runs on one machine (several worktrees, several engineers) share the host-wide allocator (the
default state dir) like agents of one host do, which is what keeps their subnets and uids apart; the
name prefix and cgroup parent are unique per test process, so what one run created is easy to find
and can never be mistaken for another's.
"""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import replace
from pathlib import Path

from . import network
from .config import SandboxConfig
from .leases import HostState


def _prefix() -> str:
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(3))


PREFIX = _prefix()
CONFIG = SandboxConfig(name_prefix=PREFIX, cgroup_parent=f"capstan-test-{PREFIX}-{os.getpid()}")


def config(**overrides: object) -> SandboxConfig:
    return replace(CONFIG, **overrides)  # type: ignore[arg-type]


def fresh(**overrides: object) -> SandboxConfig:
    """A config with a prefix and cgroup parent of its own: what one test leaves is its alone."""
    prefix = _prefix()
    return config(name_prefix=prefix, cgroup_parent=f"capstan-test-{prefix}-{os.getpid()}", **overrides)


def agent_settings() -> dict[str, object]:
    """The same, as trainer agent settings."""
    return {"sandbox_name_prefix": CONFIG.name_prefix, "sandbox_cgroup_parent": CONFIG.cgroup_parent}


def leftovers(cfg: SandboxConfig = CONFIG) -> list[str]:
    """Everything of ``cfg``'s prefix still on the host: leases, namespaces, links, cgroups."""
    found = [f"lease {lease.id}" for lease in HostState(cfg.state_dir).read().leases.values()
             if lease.cgroup_parent == cfg.cgroup_parent]
    if network.NETNS_DIR.is_dir():
        found += [f"netns {n.name}" for n in network.NETNS_DIR.iterdir() if n.name.startswith(f"{cfg.name_prefix}-")]
    found += [f"link {n.name}" for n in Path("/sys/class/net").iterdir() if n.name.startswith(cfg.name_prefix)]
    for sub in ("", "memory", "cpu", "pids"):
        parent = cfg.cgroup_root / sub / cfg.cgroup_parent
        if parent.is_dir():
            found.append(f"cgroup {parent}")
    return found
