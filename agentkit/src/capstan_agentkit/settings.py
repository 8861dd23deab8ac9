"""What every node agent reads from ``CAPSTAN_*``: where the scheduler and NATS are, the node's name,
group and capacity, its loop timings, and the sandbox's settings (``CAPSTAN_SANDBOX_*``)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from capstan_core.nodeauth import NodeAuthSettings

from .sandbox.config import DEFAULT_STATE_DIR, SandboxConfig


class NodeAgentSettings(NodeAuthSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    scheduler_addr: str = "127.0.0.1:50051"
    resource_group: str = "default"  # a resource group id (rsg-...) or name
    node_name: str = socket.gethostname()
    agent_dir: Path = Path(".capstan/agents/local")
    node_cpu: float = 0.0  # 0: detect
    node_memory_gib: float = 0.0  # 0: detect
    node_gpus: str = ""  # e.g. "A100:8": declared (simulated) cards, for multi-node tests on one machine
    heartbeat_s: float = 2.0
    health_check_s: float = 300.0  # how often the node's health checks run (disk, memory, GPUs, sandbox)
    reconcile_s: float = 1.0
    log_level: str = "INFO"
    # Platform storage (durable training output, model sources) lives under storage_dir, by default
    # <data_dir>/storage: shared by every agent started from one data dir; a shared mount across machines.
    storage_dir: Path | None = None

    @property
    def storage_root(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"

    # Containment of instances (see docs/architecture.md, Sandbox). Only this turns it off; the agent
    # then warns at every start and its sandbox health check says so.
    sandbox_uncontained: bool = False
    sandbox_state_dir: Path = DEFAULT_STATE_DIR  # host-wide: every agent of one host must share it
    sandbox_cgroup_root: Path = Path("/sys/fs/cgroup")  # where the cgroup hierarchy (v2) or hierarchies (v1) are
    sandbox_cgroup_parent: str = "capstan"
    sandbox_uid_base: int = 2_000_000
    sandbox_uid_count: int = 50_000
    sandbox_pool: str = "10.213.0.0/16"  # split into one subnet per task and host
    sandbox_subnet_prefix: int = 24
    sandbox_name_prefix: str = "cs"  # of bridges, veths, network namespaces and cgroups
    sandbox_blocked_nets: str = "169.254.0.0/16"  # comma-separated; never reachable from an instance
    sandbox_pids_per_cpu: int = 256
    sandbox_min_pids: int = 64
    # CPU time (µs) an instance may use above its quota in one period when saved up, at most the quota;
    # a new instance starts with it (its sandbox's start is not throttled). 0: none.
    sandbox_cpu_burst_us: int = 100_000
    # Served ports (online services) reachable from the gateways' hosts: the node's address they reach it
    # at, the sources allowed (comma-separated CIDRs: the gateways), and the node's port range for them.
    sandbox_publish_address: str = ""
    sandbox_publish_sources: str = ""
    sandbox_publish_ports: str = "30000-32767"

    def sandbox_config(self) -> SandboxConfig:
        data_dir = self.data_dir.resolve()
        return SandboxConfig(
            contained=not self.sandbox_uncontained, state_dir=self.sandbox_state_dir,
            cgroup_root=self.sandbox_cgroup_root, cgroup_parent=self.sandbox_cgroup_parent, uid_base=self.sandbox_uid_base,
            uid_count=self.sandbox_uid_count, pool=self.sandbox_pool, subnet_prefix=self.sandbox_subnet_prefix,
            name_prefix=self.sandbox_name_prefix,
            blocked_nets=tuple(n.strip() for n in self.sandbox_blocked_nets.split(",") if n.strip()),
            pids_per_cpu=self.sandbox_pids_per_cpu, min_pids=self.sandbox_min_pids,
            cpu_burst_us=self.sandbox_cpu_burst_us,
            network_scope=str(data_dir),  # agents of one platform (one data dir) share task networks
            private_paths=tuple(str(p.resolve()) for p in (data_dir, self.storage_root, self.agent_dir)),
            publish_address=self.sandbox_publish_address.strip(),
            publish_sources=tuple(n.strip() for n in self.sandbox_publish_sources.split(",") if n.strip()),
            publish_ports=_port_range(self.sandbox_publish_ports),
        )


def _port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"CAPSTAN_SANDBOX_PUBLISH_PORTS must be a range like 30000-32767, not {text!r}") from None
