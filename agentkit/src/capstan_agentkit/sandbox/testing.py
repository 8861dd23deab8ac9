"""Containment settings for tests, and a look for what they left behind.

Test runs on one machine (several worktrees, several engineers) share the host-wide allocator (the
default state dir) like agents of one host do, which is what keeps their subnets and uids apart; the
name prefix and cgroup parent are unique per test process, so what one run created is easy to find
and can never be mistaken for another's.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    listed = subprocess.run(["nft", "list", "set", "inet", cfg.nft_table, "bridges"], capture_output=True,
                            text=True, timeout=30)
    if listed.returncode == 0:  # no table: nothing in it
        found += [f"firewall {b}" for b in re.findall(rf'"({re.escape(cfg.name_prefix)}b\d+)"', listed.stdout)]
    return found


@dataclass(frozen=True)
class OtherHost:
    """A network namespace standing for another machine, plugged into this one by a veth pair."""

    netns: str
    address: str  # its own
    node_side: str  # this machine's address on the link to it

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True,
                              timeout=timeout)


@contextmanager
def other_hosts(count: int) -> Iterator[list[OtherHost]]:
    """``count`` other "hosts": host i is 10.252.<n>.<4i+2> on the link 10.252.<n>.<4i>/30, whose
    other end (this machine) is .<4i+1>; each routes everything through this machine. Removed after."""
    n, tag = secrets.randbelow(200) + 20, secrets.token_hex(2)
    made: list[OtherHost] = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        for i in range(count):
            ns, veth = f"oh{tag}{i}", f"ohv{tag}{i}"
            node, own = f"10.252.{n}.{4 * i + 1}", f"10.252.{n}.{4 * i + 2}"
            ip("netns", "add", ns)
            made.append(OtherHost(ns, own, node))
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("addr", "add", f"{node}/30", "dev", veth)
            ip("link", "set", veth, "up")
            for args in (("addr", "add", f"{own}/30", "dev", "eth0"), ("link", "set", "eth0", "up"),
                         ("link", "set", "lo", "up"), ("route", "add", "default", "via", node)):
                ip("-n", ns, *args)
        yield made
    finally:
        for h in made:
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True, timeout=30)  # with its veth


HTTP_GET = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status, r.read().decode()[:40])
except Exception as e:
    print("failed", type(e).__name__)
"""


def http_get(url: str, host: OtherHost | None = None) -> str:
    """``<status> <body start>`` or ``failed <error>``: a GET from ``host`` (None: this machine)."""
    argv = ["python3", "-c", HTTP_GET, url]
    if host is not None:
        return host.run(argv).stdout.strip()
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


def settled_leftovers(cfg: SandboxConfig = CONFIG, timeout: float = 10) -> list[str]:
    """:func:`leftovers` once the runners that have recorded their exit have also released what they
    held (a namespace, a bridge: deleted just after the exit code is written), or what is still there
    after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (found := leftovers(cfg)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def stop_all(executor: Any, cfg: SandboxConfig, timeout: float = 15) -> None:
    """After a test: stop every instance of ``executor``, wait until none runs, and check that nothing
    of ``cfg``'s prefix is left on the host."""
    for key in executor.list_instances():
        executor.stop(*key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(executor.status(*k).state == "running" for k in executor.list_instances()):
        time.sleep(0.1)
    assert settled_leftovers(cfg) == []
