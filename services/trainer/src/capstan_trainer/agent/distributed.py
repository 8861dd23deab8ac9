"""What an instance of a distributed task is told and given (SPEC §3.4): the environment every mode
injects, the MPI hostfile, and the platform's entry point (``agent/helpers/capstan_entry.py``) that
makes workers wait for the master, serves ``mpirun``'s daemons and starts Ray.

Peers are ``instance-<i>`` (the sandbox's /etc/hosts; their addresses are deterministic, and the
sandbox also gets them as ``CAPSTAN_PEER_IPS``, from which the entry point makes ``NODE_IP_SLOT_LIST``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from capstan_agentkit.sandbox.spec import Mount

from ..domain.roles import role_of

HELPERS_DIR = Path(__file__).resolve().parent / "helpers"
HELPERS_MOUNT = "/opt/capstan/helpers"
ENTRYPOINT = ("python3", "-I", f"{HELPERS_MOUNT}/capstan_entry.py")
MASTER_PORT = 23456
LAUNCH_PORT = 2223
RAY_PORT = 6379
PS_PORT = 2222
HOSTFILE = "/etc/mpi/hostfile"


def peer(i: int) -> str:
    return f"instance-{i}"


def gpus_per_node(gpu: float) -> int:
    """Whole cards per instance as the launchers count them (a fraction of a card is one)."""
    return math.ceil(gpu) if gpu > 0 else 0


def distributed(mode: str, roles: dict[str, int], count: int, index: int, cpu: float, gpu: float,
                memory_gib: float = 1.0) -> tuple[dict[str, str], dict[str, str], tuple[Mount, ...], tuple[str, ...]]:
    """(environment, files, mounts, entry point) of instance ``index`` of a task in ``mode``."""
    per_node = gpus_per_node(gpu)
    slots = max(1, per_node)
    env = {
        "INDEX": str(index), "RANK": str(index), "WORLD_SIZE": str(count),
        "NODE_LIST": ",".join(f"{peer(i)}:{per_node}" for i in range(count)),
        "MASTER_ADDR": peer(0), "MASTER_PORT": str(MASTER_PORT),
        "GPU_NUM": str(per_node * count), "GPU_NUM_PER_NODE": str(per_node),
    }
    if not mode:
        return env, {}, (), ()
    role, role_index = role_of(roles, index)
    env |= {"CAPSTAN_MODE": mode, "CAPSTAN_ROLE": role, "CAPSTAN_ROLE_INDEX": str(role_index),
            "CAPSTAN_LAUNCH_PORT": str(LAUNCH_PORT), "CAPSTAN_SLOTS": str(slots),
            "CAPSTAN_CPUS": str(max(1, math.floor(cpu))), "CAPSTAN_MEMORY_GIB": f"{memory_gib:g}"}
    files: dict[str, str] = {}
    if mode in ("MPI", "Horovod"):
        files[HOSTFILE] = "".join(f"{peer(i)} slots={slots}\n" for i in range(count))
        env |= {"OMPI_MCA_orte_default_hostfile": HOSTFILE, "OMPI_MCA_plm_rsh_agent": f"{HELPERS_MOUNT}/capstan_rsh",
                # PRRTE (OpenMPI 5) reads its own names for the same two settings
                "PRTE_MCA_prte_default_hostfile": HOSTFILE, "PRTE_MCA_plm_ssh_agent": f"{HELPERS_MOUNT}/capstan_rsh",
                "OMPI_MCA_btl_tcp_if_include": "eth0", "OMPI_MCA_oob_tcp_if_include": "eth0"}
    elif mode == "PS-Worker":
        env["TF_CONFIG"] = json.dumps(tf_config(roles, count, index))
    elif mode == "Ray":
        env |= {"HEAD_ADDR": peer(0), "HEAD_PORT": str(RAY_PORT)}
    return env, files, (Mount(str(HELPERS_DIR), HELPERS_MOUNT, readonly=True),), ENTRYPOINT


def tf_config(roles: dict[str, int], count: int, index: int) -> dict[str, Any]:
    cluster: dict[str, list[str]] = {}
    for i in range(count):
        role, _ = role_of(roles, i)
        cluster.setdefault(role, []).append(f"{peer(i)}:{PS_PORT}")
    role, role_index = role_of(roles, index)
    return {"cluster": cluster, "task": {"type": role, "index": role_index}, "environment": "cloud"}
