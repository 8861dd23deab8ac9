"""The node's containment policy (``SandboxConfig``) and the limits it derives from an instance's request.

The executor writes the policy into each instance directory (``sandbox.json``) when it starts the
instance, so the detached runner, and a runner adopted by a restarted agent, apply exactly the policy
the instance was started under. Every agent of one host must share ``state_dir``: it is where the
host-wide allocations (addresses, uids) live, and what makes concurrent agents safe.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

NetworkMode = Literal["isolated", "host", "none"]
RUN_ROOT = Path("/run/capstan")  # the platform's own volatile directories on a host
DEFAULT_STATE_DIR = RUN_ROOT / "sandbox"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")  # interface names are at most 15 bytes
_CGROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Thread-count variables read by OpenMP, BLAS libraries and friends: without them a library sizes its
# pool by the host's cores and a 1-CPU quota spends its time switching between 64 threads.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS")


def reachable_dir(path: Path) -> Path:
    """``path`` as a directory every uid may traverse (0755), whatever the process's umask (the platform
    runs with 077): the sandbox's staging mount point lives under it and bubblewrap, running as the
    instance's uid, must reach it. Directories it creates are 0755; of those that exist, ``path`` itself
    and the platform's own ``/run/capstan`` are made 0755 (an earlier start under umask 077 left them
    0700); any other existing ancestor is left as it is."""
    path = Path(path)
    for d in (*reversed(path.parents), path):
        if d == Path(d.anchor):
            continue
        try:
            os.mkdir(d, 0o755)
            created = True
        except FileExistsError:
            created = False
        ours = created or d == path or d == RUN_ROOT or RUN_ROOT in d.parents
        if ours and d.is_dir() and not d.is_symlink() and (os.stat(d).st_mode & 0o7777) != 0o755:
            os.chmod(d, 0o755)  # noqa: S103 -- traversable by instance uids, on purpose (see above)
    return path


@dataclass(frozen=True)
class SandboxConfig:
    """How a node contains its instances. ``contained=False`` is the operator's explicit opt-out
    (``CAPSTAN_SANDBOX_UNCONTAINED=true``): no network namespace, no limits, root in the sandbox."""

    contained: bool = True
    state_dir: Path = DEFAULT_STATE_DIR
    # cgroups: <mount>/<parent>/<prefix>-<slot> (v2) or <mount>/<controller>/<parent>/... (v1)
    cgroup_root: Path = Path("/sys/fs/cgroup")
    cgroup_parent: str = "capstan"
    # identity: each running instance gets its own host uid (and gid) from [uid_base, uid_base + uid_count)
    uid_base: int = 2_000_000
    uid_count: int = 50_000
    # network: per-task subnets of `pool`, each /subnet_prefix; names start with `name_prefix`
    pool: str = "10.213.0.0/16"
    subnet_prefix: int = 24
    name_prefix: str = "cs"
    nft_table: str = "capstan"
    # destinations no instance may reach even through NAT (cloud metadata services by default)
    blocked_nets: tuple[str, ...] = ("169.254.0.0/16",)
    # processes: pids.max = max(min_pids, pids_per_cpu * cpu)
    pids_per_cpu: int = 256
    min_pids: int = 64
    cpu_period_us: int = 100_000
    # CPU time an instance may use above its quota in one period once it has saved that much up (the
    # kernel's CFS burst, at most the quota: the average stays the quota). A new instance starts with it,
    # so the sandbox's own start (the launcher's mounts, bubblewrap), charged to the instance, is not
    # throttled at a fraction of a core (at 0.1 core, 15 ms of start-up CPU took a second 100 ms period).
    # 0: no burst.
    cpu_burst_us: int = 100_000
    # instances of one task share a network when their keys match: <scope>|<task>; the scope names the
    # platform (its data dir), so two platforms on one host (two test runs) never share a bridge
    network_scope: str = ""
    # paths an instance must never see, even through a bind that would contain them (data dir, storage)
    private_paths: tuple[str, ...] = field(default_factory=tuple)
    # served ports reachable from other hosts (a gateway elsewhere): each instance's published ports get a
    # port of `publish_ports` on the node's `publish_address`, forwarded only from `publish_sources`
    # (CIDRs). Empty address: published ports are reachable from this host only (the instance's address).
    publish_address: str = ""
    publish_sources: tuple[str, ...] = field(default_factory=tuple)
    publish_ports: tuple[int, int] = (30000, 32767)

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.name_prefix):
            raise ValueError(f"sandbox name prefix must be 1-4 lowercase letters/digits: {self.name_prefix!r}")
        if not _CGROUP_NAME_RE.match(self.cgroup_parent) or not _CGROUP_NAME_RE.match(self.nft_table):
            raise ValueError("cgroup parent and nftables table must be plain names")
        pool = ipaddress.ip_network(self.pool)
        if pool.version != 4 or not pool.prefixlen <= self.subnet_prefix <= 29:
            raise ValueError(f"sandbox pool {self.pool} cannot be split into /{self.subnet_prefix} subnets")
        for net in self.blocked_nets:
            ipaddress.ip_network(net)
        if not 0 <= self.cpu_burst_us <= 1_000_000:
            raise ValueError(f"cpu burst must be 0..1000000 microseconds: {self.cpu_burst_us}")
        if self.uid_base < 1000 or self.uid_count < 1 or self.uid_base + self.uid_count > 2**32 - 2:
            raise ValueError("sandbox uid range must lie above system uids")
        if self.publish_address:
            if ipaddress.ip_address(self.publish_address).version != 4:
                raise ValueError(f"publish address must be an IPv4 address: {self.publish_address}")
            if not self.publish_sources:
                raise ValueError("a publish address needs the sources allowed to reach it (publish sources: the "
                                 "gateways' addresses or networks); nothing is published to everyone")
        for net in self.publish_sources:
            if ipaddress.ip_network(net).version != 4:
                raise ValueError(f"publish sources must be IPv4 networks: {net}")
        lo, hi = self.publish_ports
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError(f"publish ports must be a range within 1024..65535: {lo}-{hi}")

    def to_json(self) -> str:
        data = asdict(self)
        data["state_dir"], data["cgroup_root"] = str(self.state_dir), str(self.cgroup_root)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SandboxConfig:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}  # a newer agent's extra fields are ignored
        for name in ("state_dir", "cgroup_root"):
            if name in kw:
                kw[name] = Path(kw[name])
        for name in ("blocked_nets", "private_paths", "publish_sources", "publish_ports"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


@dataclass(frozen=True)
class Limits:
    """What the kernel enforces for one instance; 0 means "no limit" for that resource."""

    memory_bytes: int = 0
    cpu_quota_us: int = 0
    cpu_period_us: int = 100_000
    pids_max: int = 0
    cpu_burst_us: int = 0

    @classmethod
    def of(cls, cpu: float, memory_gib: float, config: SandboxConfig) -> Limits:
        """The request is the limit. A request of 0 (a spec written without one) is not limited."""
        period = config.cpu_period_us
        quota = max(1000, round(cpu * period)) if cpu > 0 else 0  # the kernel's minimum quota is 1 ms
        pids = max(config.min_pids, math.ceil(config.pids_per_cpu * cpu)) if cpu > 0 else config.min_pids * 16
        return cls(round(memory_gib * (1 << 30)), quota, period, pids, config.cpu_burst_us if quota else 0)


def describe_memory(memory_gib: float) -> str:
    """How a failure names the limit: ``1 GiB``, ``0.5 GiB``."""
    return f"{memory_gib:g} GiB"


def thread_env(cpu: float, env: dict[str, str]) -> dict[str, str]:
    """``OMP_NUM_THREADS`` and friends set to ceil(cpu), except those the user set."""
    if cpu <= 0:
        return {}
    n = str(max(1, math.ceil(cpu)))
    return {name: n for name in THREAD_ENV if name not in env}
