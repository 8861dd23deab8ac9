"""``up``, ``down``, ``restart-component`` and ``agent start/stop``: the process table put to work."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan_core import credentials
from capstan_core.contracts.training import PLATFORM_STOP_FILE
from capstan_core.natsserver import NatsServer, free_port

from . import procs
from .client import ApiClient, ApiError, read_token_file, wait_until
from .health import ComponentFailed, all_healthy, wait_healthy
from .platform import (
    AGENTS,
    EXTRA_AGENT_PREFIX,
    SERVICES,
    Component,
    Paths,
    PlatformError,
    Ports,
    components,
    inherited_env,
    load_env,
    missing,
    nats_binary,
    process_env,
    read_text,
    save_env,
    stop_order,
    write_atomic,
)

Say = Callable[[str], None]
TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
DEFAULT_RG = "default"


def progress(say: Say) -> Callable[[Component, float], None]:
    return lambda comp, elapsed: say(f"  {comp.name:<16} healthy  ({elapsed:.1f}s)")


def startup_error(paths: Paths, e: ComponentFailed, hint: bool = True) -> PlatformError:
    log = e.component.log_file
    msg = f"{e.component.name} {e.reason}; last lines of {log}:\n{procs.tail(log)}"
    if hint:
        msg += f"\nWhat did start is left running; stop it with: capstan down --data-dir {paths.root}"
    return PlatformError(msg)


def start_component(paths: Paths, comp: Component, saved_env: dict[str, str]) -> int:
    """Start one component detached and record its pid; nats-server through capstan_core's NatsServer."""
    if comp.kind == "nats":
        assert comp.listen is not None
        link = paths.logs / "nats.log"  # every log under DIR/logs, nats-server's included
        if not link.is_symlink() and not link.exists():
            link.symlink_to(comp.log_file)
        authorization = (paths.secrets / credentials.NATS_AUTH).read_text()
        server = NatsServer(dir=paths.nats, port=comp.listen[1], binary=nats_binary(), authorization=authorization)
        try:
            server.start(detach=True)
        except TimeoutError as e:
            if server.proc is not None:
                procs.record_pid(paths, comp.name, server.proc.pid)
            raise PlatformError(f"{e}; last lines of {comp.log_file}:\n{procs.tail(comp.log_file)}") from e
        assert server.proc is not None
        pid = int(server.proc.pid)
    else:
        if comp.ready_file is not None:
            comp.ready_file.unlink(missing_ok=True)
        pid = procs.spawn(comp, process_env(comp, saved_env), cwd=paths.root).pid
    procs.record_pid(paths, comp.name, pid)
    return pid


def _running(paths: Paths, table: dict[str, Component]) -> dict[str, int]:
    found = {}
    for name, comp in table.items():
        pid = procs.running_pid(paths, comp)
        if pid is not None:
            found[name] = pid
    return found


def _settle_ports(paths: Paths, ports: Ports | None, port: int, host: str, running: dict[str, int], say: Say) -> Ports:
    """Check --port first (refuse one taken by something else), then reuse the saved ports,
    picking a new one only for a port now taken while none of the platform runs."""
    if "gateway" not in running:
        problem = procs.port_problem(host, port)
        if problem:
            raise PlatformError(f"{problem}; choose another --port")
    if ports is None:
        return Ports.allocate(port, host)
    ports.http, ports.http_host = port, host
    if not ports.bootstrap:  # saved before the bootstrap port existed
        ports.bootstrap = free_port()
    for name in ("nats", *SERVICES):
        if name in running:
            continue
        current = int(getattr(ports, name))
        problem = procs.port_problem("127.0.0.1", current) if current != port else "it is now the --port"
        if not problem:
            continue
        if running:
            raise PlatformError(
                f"{name}'s saved port {current} is taken ({problem}) while other components run; "
                f"stop them with capstan down --data-dir {paths.root}, then run up again"
            )
        new = free_port()
        say(f"  {name}: saved port {current} is taken ({problem}); using {new}")
        setattr(ports, name, new)
    return ports


def ensure_default_rg(paths: Paths, api_url: str, token: str | None) -> str:
    with ApiClient(api_url, token) as client:
        saved = read_text(paths.default_rg)
        if saved:
            try:
                wait_until(lambda: client.get(f"/resource-groups/{saved}"), TIMEOUT)
                return saved
            except ApiError as e:
                if e.status != 404:
                    raise
        try:
            rg = wait_until(
                lambda: client.post(
                    "/resource-groups", {"name": DEFAULT_RG}, headers={"Idempotency-Key": "capstan-up-default"}
                ),
                TIMEOUT,
            )
        except ApiError as e:
            if e.status != 409:
                raise
            found = own_named(client, "/resource-groups", DEFAULT_RG)
            if found is None:
                raise
            rg = found
    rg_id = str(rg["id"])
    write_atomic(paths.default_rg, rg_id + "\n")
    return rg_id


def issue_join_tokens(api_url: str, token: str | None, agents: list[Component], paths: Paths) -> None:
    """Each agent without a node certificate yet gets a join token (1 hour, used at its first start),
    written 0600 where the agent reads it; an agent that already has its certificate needs none."""
    pending = [c for c in agents if not (Path(c.extra["credentials"]) / "node.json").exists()]
    if not pending:
        return
    with ApiClient(api_url, token) as client:
        for comp in pending:
            rg = resolve_group(client, comp.extra["resource_group"])
            created = client.post(
                "/join-tokens", {"resource_group_id": rg, "description": f"capstan up: {comp.name}", "ttl_seconds": 3600}
            )
            credentials.replace_secret(paths.join_token_file(comp.name), str(created["token"]).encode())


def own_named(client: ApiClient, path: str, name: str) -> dict[str, Any] | None:
    """The object of the list at ``path`` named ``name`` that the caller's tenant owns (names are unique per
    tenant; the operator's list holds every tenant's, a user's also groups shared with it); else the one
    object of that name it can see; None when none, or several of other tenants."""
    found = [g for g in client.paginate(path) if g.get("name") == name]
    if len(found) <= 1:
        return found[0] if found else None
    tenant = str(client.get("/whoami")["account"]["tenant"])
    mine = [g for g in found if g.get("tenant") == tenant]
    return mine[0] if len(mine) == 1 else None


def resolve_group(client: ApiClient, rg: str) -> str:
    """A resource group given by id or by name (the caller's tenant's) -> its id."""
    if rg.startswith("rsg-"):
        return rg
    found = own_named(client, "/resource-groups", rg)
    if found is None:
        raise PlatformError(f"no resource group named {rg!r} of your tenant; give its id (capstan rg list)")
    return str(found["id"])


def _usable(table: dict[str, Component], say: Say | None = None) -> dict[str, Component]:
    """The table, once every component's code is known to be installed."""
    for name, comp in table.items():
        reason = missing(comp)
        if reason is not None:
            raise PlatformError(f"{name} cannot start: {reason}; run scripts/install.sh")
    return table


def up(data_dir: str, port: int, host: str, say: Say) -> dict[str, Any]:
    """Start whatever of the platform is not running; return a summary (api url, token path, ...)."""
    started = time.monotonic()
    os.umask(0o077)  # everything the platform writes under the data dir is its own (0600 / 0700)
    paths = Paths.of(data_dir)
    paths.make()
    credentials.ensure_platform_secrets(paths.secrets)
    ports = Ports.load(paths)
    saved_rg = read_text(paths.default_rg)
    table = _usable(components(paths, ports, saved_rg)) if ports else {}
    running = _running(paths, table)
    if "gateway" in running and ports and (ports.http, ports.http_host) != (port, host):
        raise PlatformError(
            f"the platform in {paths.root} is already up with its API at {ports.api_url}; "
            f"to change --port or --host, first run capstan down --data-dir {paths.root}"
        )
    if ports and saved_rg and running.keys() >= table.keys() and asyncio.run(all_healthy(list(table.values()))):
        return _summary(paths, ports, saved_rg, already=True)

    ports = _settle_ports(paths, ports, port, host, running, say)
    ports.save(paths)
    if not running:
        save_env(paths, inherited_env())
    saved_env = load_env(paths)
    say(f"Starting Capstan in {paths.root}")
    table = _usable(components(paths, ports), say)
    report = progress(say)
    if "nats" not in running:
        start_component(paths, table["nats"], saved_env)  # returns once nats-server listens
        report(table["nats"], time.monotonic() - started)
    _start_and_wait(paths, [c for c in table.values() if c.kind != "nats"], running, saved_env, report, started)

    token = read_token_file(paths.admin_token, 15.0)
    if not token:
        raise PlatformError(
            f"the gateway is healthy but did not write {paths.admin_token}; see {paths.log_file('gateway')}"
        )
    try:
        rg = ensure_default_rg(paths, ports.api_url, token)
    except ApiError as e:
        raise PlatformError(f"could not ensure the default resource group: {e.message}") from e

    agents = list(_usable({n: c for n, c in components(paths, ports, rg).items() if c.kind == "agent"}, say).values())
    try:
        issue_join_tokens(ports.api_url, token, [a for a in agents if a.name not in running], paths)
    except ApiError as e:
        raise PlatformError(f"could not issue join tokens for the agents: {e.message}") from e
    _start_and_wait(paths, agents, running, saved_env, report, started)
    write_atomic(paths.api_url, ports.api_url + "\n")
    return _summary(paths, ports, rg, already=False)


def _start_and_wait(
    paths: Paths,
    comps: list[Component],
    running: dict[str, int],
    saved_env: dict[str, str],
    report: Callable[[Component, float], None],
    started: float,
) -> None:
    """Start those of ``comps`` not running (all at once), then wait until every one is healthy."""
    waiting = [(c, running.get(c.name) or start_component(paths, c, saved_env)) for c in comps]
    try:
        asyncio.run(wait_healthy(waiting, TIMEOUT, report, started))
    except ComponentFailed as e:
        raise startup_error(paths, e) from e


def _summary(paths: Paths, ports: Ports, rg: str, already: bool) -> dict[str, Any]:
    return {
        "already_up": already,
        "data_dir": str(paths.root),
        "api_url": ports.api_url,
        "admin_token_file": str(paths.admin_token),
        "default_resource_group": rg,
        "logs": str(paths.logs),
    }


def _pid_entries(paths: Paths, table: dict[str, Component]) -> list[list[tuple[str, str]]]:
    """(name, match) per stop group, including pid files of agents no longer in the table."""
    groups = [[(n, table[n].match) for n in group if n in table] for group in stop_order(table)]
    known = set(table)
    for pid_file in sorted(paths.run.glob("*.pid")):
        if pid_file.stem not in known:
            groups[0].append((pid_file.stem, str(paths.run)))
    return groups


def down(data_dir: str, say: Say) -> list[dict[str, Any]]:
    """Stop everything in DIR: agents, instance runners, gateway, services, nats-server."""
    paths = Paths.of(data_dir)
    stopped: list[dict[str, Any]] = []
    if not paths.run.is_dir():
        say(f"Nothing to stop: no platform in {paths.root}")
        return stopped
    ports = Ports.load(paths) or Ports(0, 0, 0, 0, 0, 0)
    table = components(paths, ports, read_text(paths.default_rg) or "-")
    for i, group in enumerate(_pid_entries(paths, table)):
        live: list[tuple[str, int, str]] = []
        for name, match in group:
            pid = procs.read_pid(paths.pid_file(name))
            if pid is None:
                continue
            if procs.alive(pid, match):
                live.append((name, pid, match))
            else:
                say(f"  {name} was not running (stale pid {pid})")
                forget(paths, table.get(name), name)
        results = dict(procs.terminate([(pid, match) for _, pid, match in live], STOP_TIMEOUT))
        for name, pid, _ in live:
            killed = results.get(pid, False)
            say(f"  stopped {name} (pid {pid}{f', killed after {STOP_TIMEOUT:.0f}s' if killed else ''})")
            stopped.append({"name": name, "pid": pid, "killed": killed})
            forget(paths, table.get(name), name)
        if i == 0:
            stopped.extend(_stop_runners(paths, say))
    if not stopped:
        say(f"Nothing was running in {paths.root}")
    return stopped


def forget(paths: Paths, comp: Component | None, name: str) -> None:
    paths.pid_file(name).unlink(missing_ok=True)
    if comp is not None and comp.ready_file is not None:
        comp.ready_file.unlink(missing_ok=True)


def _stop_runners(paths: Paths, say: Say) -> list[dict[str, Any]]:
    """Instance runners outlive their agent on purpose (an agent restart adopts them); down stops them.
    runner.pid stays: it is the agent's record of the instance."""
    found: list[tuple[int, str]] = []
    for pid_file in sorted(paths.agents.glob("*/instances/*/runner.pid")):
        pid = procs.read_pid(pid_file)
        if pid is not None and procs.alive(pid, "runner"):
            # The platform stops it, not its user or its code: the agent reports an eviction, and the
            # task runs again after the next `up` instead of failing with 143.
            (pid_file.parent / PLATFORM_STOP_FILE).touch()
            found.append((pid, str(pid_file.parent.relative_to(paths.root))))
    results = dict(procs.terminate([(pid, "runner") for pid, _ in found], STOP_TIMEOUT))
    out = []
    for pid, where in found:
        say(f"  stopped instance runner (pid {pid}, {where})")
        out.append({"name": "instance-runner", "pid": pid, "killed": results.get(pid, False), "instance": where})
    if any(results.values()):
        _reap_sandboxes(paths, say)
    return out


def _reap_sandboxes(paths: Paths, say: Say) -> None:
    """A runner that needed SIGKILL (a grace period longer than ours) could not undo its sandbox's
    containment (cgroup, network namespace, bridge); the trainer's reaper does, as an agent start would."""
    argv = [sys.executable, "-m", "capstan_agentkit.sandbox.containment", "--reap"]
    try:
        run = subprocess.run(argv, env={**os.environ, **load_env(paths)}, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"  could not clean up after the killed instance runners: {e}")
        return
    for line in run.stdout.splitlines():
        say(f"  {line}")


def saved_ports(paths: Paths) -> Ports:
    ports = Ports.load(paths)
    if ports is None:
        raise PlatformError(f"no platform was started in {paths.root} (no {paths.ports}); run capstan up first")
    return ports


def restart_component(data_dir: str, name: str, say: Say) -> int:
    """Stop ``name`` if it runs, start it again with the saved ports and environment, wait until healthy."""
    os.umask(0o077)
    paths = Paths.of(data_dir)
    ports = saved_ports(paths)
    rg = read_text(paths.default_rg)
    table = components(paths, ports, rg)
    if name not in table:
        if name in AGENTS or name.startswith(EXTRA_AGENT_PREFIX):
            raise PlatformError(
                f"{name} is not known yet: run capstan up first (it creates the default resource group)"
            )
        raise PlatformError(f"unknown component {name!r}; one of: {', '.join(table)}")
    comp = table[name]
    reason = missing(comp)
    if reason is not None:
        raise PlatformError(f"{name} cannot start: {reason}")
    pid = procs.running_pid(paths, comp)
    if pid is not None:
        killed = dict(procs.terminate([(pid, comp.match)], STOP_TIMEOUT)).get(pid)
        say(f"  stopped {name} (pid {pid}{', killed' if killed else ''})")
    if comp.listen is not None:
        problem = procs.port_problem(*comp.listen)
        if problem:
            raise PlatformError(f"cannot restart {name}: {problem}")
    started = time.monotonic()
    pid = start_component(paths, comp, load_env(paths))
    try:
        asyncio.run(wait_healthy([(comp, pid)], TIMEOUT, progress(say), started))
    except ComponentFailed as e:
        raise startup_error(paths, e, hint=False) from e
    return pid
