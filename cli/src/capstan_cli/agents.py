"""``capstan agent start/stop``: agents (trainer or inference) added on this machine beyond the two of ``up``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from . import procs
from .client import ApiError, read_token_file
from .health import ComponentFailed, wait_healthy
from .lifecycle import (
    STOP_TIMEOUT,
    TIMEOUT,
    Say,
    forget,
    issue_join_tokens,
    progress,
    saved_ports,
    start_component,
    startup_error,
)
from .platform import (
    AGENT_NAME_RE,
    ExtraAgent,
    Paths,
    PlatformError,
    Ports,
    components,
    extra_agent_component,
    load_env,
    load_extra_agents,
    read_text,
    save_extra_agents,
)


def agent_start(
    data_dir: str,
    name: str,
    resource_group: str | None,
    cpu: float | None,
    memory_gib: float | None,
    gpus: str | None,
    say: Say,
    kind: str = "trainer",
) -> dict[str, Any]:
    """Start one more agent on this machine, recorded so ``down`` stops it and ``up`` restarts it."""
    if not AGENT_NAME_RE.match(name):
        raise PlatformError(f"invalid agent name {name!r}: use letters, digits, '.', '_' and '-'")
    paths = Paths.of(data_dir)
    ports = saved_ports(paths)
    if procs.running_pid(paths, components(paths, ports)["nats"]) is None:
        raise PlatformError(f"the platform in {paths.root} is not running; run capstan up first")
    rg = resource_group or read_text(paths.default_rg)
    if not rg:
        raise PlatformError("no --resource-group given and no default resource group; run capstan up first")
    agent = ExtraAgent(name=name, resource_group=rg, cpu=cpu, memory_gib=memory_gib, gpus=gpus, kind=kind)
    comp = extra_agent_component(paths, ports, agent)
    pid = procs.running_pid(paths, comp)
    if pid is not None:
        raise PlatformError(f"agent {name} is already running (pid {pid}); stop it with capstan agent stop {name}")
    os.umask(0o077)
    try:
        issue_join_tokens(ports.api_url, read_token_file(paths.admin_token, 5.0), [comp], paths)
    except ApiError as e:
        raise PlatformError(f"could not issue a join token for agent {name}: {e.message}") from e
    agents = load_extra_agents(paths)
    agents[name] = agent
    save_extra_agents(paths, agents)
    started = time.monotonic()
    pid = start_component(paths, comp, load_env(paths))
    try:
        asyncio.run(wait_healthy([(comp, pid)], TIMEOUT, progress(say), started))
    except ComponentFailed as e:
        raise startup_error(paths, e, hint=False) from e
    assert comp.ready_file is not None
    return {"name": name, "node_id": read_text(comp.ready_file), "pid": pid, "resource_group": rg, "kind": kind}


def agent_stop(data_dir: str, name: str, say: Say) -> None:
    paths = Paths.of(data_dir)
    agents = load_extra_agents(paths)
    if name not in agents:
        raise PlatformError(f"no agent named {name!r} was started with capstan agent start in {paths.root}")
    ports = Ports.load(paths) or Ports(0, 0, 0, 0, 0, 0)
    comp = extra_agent_component(paths, ports, agents[name])
    pid = procs.running_pid(paths, comp)
    if pid is not None:
        procs.terminate([(pid, comp.match)], STOP_TIMEOUT)
        say(f"  stopped agent {name} (pid {pid})")
    forget(paths, comp, comp.name)
    del agents[name]
    save_extra_agents(paths, agents)
