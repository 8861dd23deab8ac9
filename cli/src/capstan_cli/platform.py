"""The process table of a local platform: which processes make it up, with what
arguments, environment, ready file and health check.

``up``, ``down``, ``restart-component`` and ``agent start`` all read this one
table, so a process is described once. Everything lives under the data dir::

    DIR/run/ports.json        ports picked on the first ``up``, reused ever after
    DIR/run/env.json          CAPSTAN_* settings inherited at ``up`` (restarts reuse them)
    DIR/run/<name>.pid        one per running process
    DIR/run/<svc>.addr        ready files (gRPC address), <agent>.ready (node id)
    DIR/run/default-rg        id of the "default" resource group
    DIR/run/extra-agents.json agents added with ``capstan agent start``
    DIR/run/api-url           the REST API address, read by the client commands
    DIR/run/<agent>.join-token  a join token for an agent that has no node certificate yet (0600)
    DIR/secrets/              the platform CA, each component's certificate, NATS users (0700)
    DIR/logs/<name>.log       stdout and stderr of each process (nats: DIR/nats/nats-server.log)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from capstan_core.natsserver import free_port

SERVICES: tuple[str, ...] = ("scheduler", "trainer", "registry", "inference")
# Components the platform runs without while their package is still being built: ``up`` skips
# them, with a warning, when their code is not installed.
AGENTS: tuple[str, ...] = ("trainer-agent", "inference-agent")
CORE: tuple[str, ...] = ("nats", *SERVICES, "gateway")
EXTRA_AGENT_PREFIX = "agent-"
# Set by ``up``/``restart`` themselves, never inherited from the caller's environment.
OWNED_ENV = (
    "CAPSTAN_DATA_DIR",
    "CAPSTAN_NATS_URL",
    "CAPSTAN_GRPC_LISTEN",
    "CAPSTAN_HTTP_LISTEN",
    "CAPSTAN_SCHEDULER_ADDR",
    "CAPSTAN_TRAINER_ADDR",
    "CAPSTAN_REGISTRY_ADDR",
    "CAPSTAN_INFERENCE_ADDR",
    "CAPSTAN_RESOURCE_GROUP",
    "CAPSTAN_NODE_NAME",
    "CAPSTAN_AGENT_DIR",
    "CAPSTAN_NODE_CPU",
    "CAPSTAN_NODE_MEMORY_GIB",
    "CAPSTAN_NODE_GPUS",
    "CAPSTAN_GRPC_BOOTSTRAP_LISTEN",
    "CAPSTAN_SCHEDULER_BOOTSTRAP_ADDR",
    "CAPSTAN_JOIN_TOKEN",
    "CAPSTAN_JOIN_TOKEN_FILE",
    "CAPSTAN_SECRETS_DIR",
    "CAPSTAN_CA_FILE",
)
# Client-side settings of this command, meaningless to the platform's processes.
CLIENT_ENV = ("CAPSTAN_API", "CAPSTAN_TOKEN")
AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

Kind = Literal["nats", "service", "gateway", "agent"]


class PlatformError(Exception):
    """A problem the user can act on; the command prints it and exits 1."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str]) -> Paths:
        return cls(Path(data_dir).expanduser().resolve())

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def agents(self) -> Path:
        return self.root / "agents"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin-token"

    @property
    def session(self) -> Path:
        """The session token ``capstan login`` stores (0600); used before the admin token."""
        return self.root / "session"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def join_token_file(self, name: str) -> Path:
        return self.run / f"{name}.join-token"

    @property
    def ports(self) -> Path:
        return self.run / "ports.json"

    @property
    def env(self) -> Path:
        return self.run / "env.json"

    @property
    def api_url(self) -> Path:
        return self.run / "api-url"

    @property
    def default_rg(self) -> Path:
        return self.run / "default-rg"

    @property
    def extra_agents(self) -> Path:
        return self.run / "extra-agents.json"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.nats / "nats-server.log" if name == "nats" else self.logs / f"{name}.log"

    def make(self) -> None:
        """The data dir and its parts, each 0700: nothing in it is for other users of the machine."""
        for d in (self.root, self.run, self.logs, self.agents):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)


@dataclass
class Ports:
    """Every port of the platform; picked once, saved in DIR/run/ports.json."""

    nats: int
    scheduler: int
    trainer: int
    registry: int
    inference: int
    http: int
    http_host: str = "127.0.0.1"
    bootstrap: int = 0  # the scheduler's TLS-only port for join tokens (0 in ports.json before it existed)

    def grpc(self, service: str) -> int:
        return int(getattr(self, service))

    @property
    def api_url(self) -> str:
        return f"http://{connect_host(self.http_host)}:{self.http}"

    @classmethod
    def allocate(cls, http: int, http_host: str) -> Ports:
        picked: dict[str, int] = {}
        for name in ("nats", *SERVICES, "bootstrap"):
            port = free_port()
            while port == http or port in picked.values():
                port = free_port()
            picked[name] = port
        return cls(**picked, http=http, http_host=http_host)

    @classmethod
    def load(cls, paths: Paths) -> Ports | None:
        try:
            data = json.loads(paths.ports.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise PlatformError(f"{paths.ports} is not valid JSON ({e}); remove it and run capstan up again") from e
        try:
            return cls(**data)
        except TypeError as e:
            raise PlatformError(f"{paths.ports} does not hold the expected ports ({e})") from e

    def save(self, paths: Paths) -> None:
        write_atomic(paths.ports, json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class ExtraAgent:
    """An agent added with ``capstan agent start``; its node name is ``name``. ``kind``: what it runs
    (``trainer``: training tasks; ``inference``: service replicas)."""

    name: str
    resource_group: str
    cpu: float | None = None
    memory_gib: float | None = None
    gpus: str | None = None
    kind: str = "trainer"


# The executable of each agent kind (``capstan agent start --kind``).
AGENT_EXECUTABLES = {"trainer": "capstan-trainer-agent", "inference": "capstan-inference-agent"}


@dataclass
class Component:
    name: str
    kind: Kind
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    # Substring of /proc/<pid>/cmdline proving a pid is still this process (pids get reused).
    match: str
    ready_file: Path | None = None
    grpc_addr: str | None = None
    health_url: str | None = None
    listen: tuple[str, int] | None = None
    extra: dict[str, str] = field(default_factory=dict)


def missing(comp: Component) -> str | None:
    """Why ``comp`` cannot start from this install (no executable, or its module is absent), or None."""
    if comp.kind == "nats":
        return None
    exe = Path(comp.argv[0])
    if not exe.exists():
        return f"{exe} does not exist"
    for ep in importlib.metadata.entry_points(group="console_scripts", name=exe.name):
        try:
            spec = importlib.util.find_spec(ep.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return f"its module {ep.module} is not installed"
    return None


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 - wildcard listen, reached on loopback


def bin_dir() -> Path:
    """The platform's executables sit next to this interpreter (the virtualenv's bin)."""
    return Path(sys.executable).parent


def nats_binary() -> str:
    from capstan_core.natsserver import find_binary

    try:
        return os.environ.get("CAPSTAN_NATS_SERVER") or find_binary()
    except FileNotFoundError as e:
        raise PlatformError(str(e)) from e


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def inherited_env() -> dict[str, str]:
    """CAPSTAN_* settings of the caller (log level, database URL...) that the platform keeps."""
    skip = set(OWNED_ENV) | set(CLIENT_ENV)
    return {k: v for k, v in os.environ.items() if k.startswith("CAPSTAN_") and k not in skip}


def save_env(paths: Paths, env: dict[str, str]) -> None:
    write_atomic(paths.env, json.dumps(env, indent=2, sort_keys=True) + "\n")


def load_env(paths: Paths) -> dict[str, str]:
    try:
        data = json.loads(paths.env.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def load_extra_agents(paths: Paths) -> dict[str, ExtraAgent]:
    try:
        data = json.loads(paths.extra_agents.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {name: ExtraAgent(**spec) for name, spec in data.items()}


def save_extra_agents(paths: Paths, agents: dict[str, ExtraAgent]) -> None:
    data = {name: asdict(a) for name, a in sorted(agents.items())}
    write_atomic(paths.extra_agents, json.dumps(data, indent=2) + "\n")


def shared_env(paths: Paths, ports: Ports) -> dict[str, str]:
    """What every process of the platform is told: where the data, the bus and the services are."""
    env = {
        "CAPSTAN_DATA_DIR": str(paths.root),
        "CAPSTAN_NATS_URL": f"nats://127.0.0.1:{ports.nats}",
        "CAPSTAN_SCHEDULER_BOOTSTRAP_ADDR": f"127.0.0.1:{ports.bootstrap}",
        "PYTHONUNBUFFERED": "1",  # logs reach DIR/logs as they are written
    }
    for svc in SERVICES:
        env[f"CAPSTAN_{svc.upper()}_ADDR"] = f"127.0.0.1:{ports.grpc(svc)}"
    return env


def _service(paths: Paths, ports: Ports, base: dict[str, str], svc: str) -> Component:
    ready = paths.run / f"{svc}.addr"
    addr = f"127.0.0.1:{ports.grpc(svc)}"
    env = {**base, "CAPSTAN_GRPC_LISTEN": addr}
    if svc == "scheduler":
        env["CAPSTAN_GRPC_BOOTSTRAP_LISTEN"] = f"127.0.0.1:{ports.bootstrap}"
    return Component(
        name=svc,
        kind="service",
        argv=[str(bin_dir() / f"capstan-{svc}"), "serve", "--ready-file", str(ready)],
        env=env,
        log_file=paths.log_file(svc),
        match=str(ready),
        ready_file=ready,
        grpc_addr=addr,
        listen=("127.0.0.1", ports.grpc(svc)),
        extra={"secrets": str(paths.secrets)},  # health checks present the operator's certificate
    )


def _agent(
    paths: Paths, base: dict[str, str], name: str, executable: str, rg: str, node: str, capacity: dict[str, str]
) -> Component:
    ready = paths.run / f"{name}.ready"
    return Component(
        name=name,
        kind="agent",
        argv=[str(bin_dir() / executable), "--ready-file", str(ready)],
        env={
            **base,
            "CAPSTAN_RESOURCE_GROUP": rg,
            "CAPSTAN_NODE_NAME": node,
            "CAPSTAN_AGENT_DIR": str(paths.agents / node),
            # Read only while the node has no certificate yet (its first start).
            "CAPSTAN_JOIN_TOKEN_FILE": str(paths.join_token_file(name)),
            **capacity,
        },
        log_file=paths.log_file(name),
        match=str(ready),
        ready_file=ready,
        extra={"node_name": node, "resource_group": rg, "credentials": str(paths.agents / node / "credentials")},
    )


def extra_agent_component(paths: Paths, ports: Ports, agent: ExtraAgent) -> Component:
    capacity = {}
    if agent.cpu is not None:
        capacity["CAPSTAN_NODE_CPU"] = _num(agent.cpu)
    if agent.memory_gib is not None:
        capacity["CAPSTAN_NODE_MEMORY_GIB"] = _num(agent.memory_gib)
    if agent.gpus:
        capacity["CAPSTAN_NODE_GPUS"] = agent.gpus
    base = shared_env(paths, ports)
    name = EXTRA_AGENT_PREFIX + agent.name
    return _agent(paths, base, name, AGENT_EXECUTABLES[agent.kind], agent.resource_group, agent.name, capacity)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def components(
    paths: Paths, ports: Ports, default_rg: str | None = None, hostname: str | None = None
) -> dict[str, Component]:
    """The whole table, in start order. Agents appear once the default resource group is known."""
    base = shared_env(paths, ports)
    conf = paths.nats / "nats.conf"
    table: dict[str, Component] = {
        "nats": Component(
            name="nats",
            kind="nats",
            argv=["nats-server", "-c", str(conf)],  # started through capstan_core's NatsServer
            env={},
            log_file=paths.log_file("nats"),
            match=str(conf),
            listen=("127.0.0.1", ports.nats),
        )
    }
    for svc in SERVICES:
        table[svc] = _service(paths, ports, base, svc)
    gw_ready = paths.run / "gateway.addr"
    table["gateway"] = Component(
        name="gateway",
        kind="gateway",
        argv=[str(bin_dir() / "capstan-gateway"), "--ready-file", str(gw_ready)],
        env={**base, "CAPSTAN_HTTP_LISTEN": f"{ports.http_host}:{ports.http}"},
        log_file=paths.log_file("gateway"),
        match=str(gw_ready),
        ready_file=gw_ready,
        health_url=f"{ports.api_url}/healthz",
        listen=(ports.http_host, ports.http),
    )
    if default_rg:
        host = hostname or socket.gethostname()
        for name, exe in (("trainer-agent", "capstan-trainer-agent"), ("inference-agent", "capstan-inference-agent")):
            node = f"{host}-{name.removesuffix('-agent')}"
            table[name] = _agent(paths, base, name, exe, default_rg, node, {})
        for agent in load_extra_agents(paths).values():
            comp = extra_agent_component(paths, ports, agent)
            table[comp.name] = comp
    return table


def process_env(component: Component, saved: dict[str, str]) -> dict[str, str]:
    """The full environment of a process: ours, minus settings we own, plus saved ones, plus its own."""
    env = {k: v for k, v in os.environ.items() if k not in OWNED_ENV and k not in CLIENT_ENV}
    env.update(saved)
    env.update(component.env)
    return env


def stop_order(table: dict[str, Component]) -> list[list[str]]:
    """``down`` stops agents first, then the gateway, the services, and nats-server last."""
    agents = [n for n, c in table.items() if c.kind == "agent"]
    return [agents, ["gateway"], list(SERVICES), ["nats"]]
