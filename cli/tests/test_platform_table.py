"""The process table (argv, env, ready files), port persistence and the saved environment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from capstan_cli.platform import (
    SERVICES,
    Component,
    ExtraAgent,
    Paths,
    PlatformError,
    Ports,
    components,
    inherited_env,
    load_env,
    load_extra_agents,
    missing,
    process_env,
    save_env,
    save_extra_agents,
    stop_order,
)

BIN = Path(sys.executable).parent


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths.of(tmp_path / "d")
    p.make()
    return p


@pytest.fixture
def ports() -> Ports:
    return Ports(nats=4001, scheduler=4002, trainer=4003, registry=4004, inference=4005, http=8080)


def test_services_argv_and_env(paths: Paths, ports: Ports) -> None:
    table = components(paths, ports)
    assert list(table) == ["nats", *SERVICES, "gateway"]  # start order; agents need the default group
    sched = table["scheduler"]
    assert sched.argv == [str(BIN / "capstan-scheduler"), "serve", "--ready-file", str(paths.run / "scheduler.addr")]
    assert sched.env["CAPSTAN_GRPC_LISTEN"] == "127.0.0.1:4002"
    assert sched.grpc_addr == "127.0.0.1:4002"
    for svc in SERVICES:
        env = table[svc].env
        assert env["CAPSTAN_DATA_DIR"] == str(paths.root)
        assert env["CAPSTAN_NATS_URL"] == "nats://127.0.0.1:4001"
        assert env["CAPSTAN_SCHEDULER_ADDR"] == "127.0.0.1:4002"
        assert env["CAPSTAN_TRAINER_ADDR"] == "127.0.0.1:4003"
        assert env["CAPSTAN_REGISTRY_ADDR"] == "127.0.0.1:4004"
        assert env["CAPSTAN_INFERENCE_ADDR"] == "127.0.0.1:4005"
        assert table[svc].log_file == paths.logs / f"{svc}.log"


def test_gateway_argv_and_env(paths: Paths, ports: Ports) -> None:
    gw = components(paths, ports)["gateway"]
    assert gw.argv == [str(BIN / "capstan-gateway"), "--ready-file", str(paths.run / "gateway.addr")]
    assert gw.env["CAPSTAN_HTTP_LISTEN"] == "127.0.0.1:8080"
    assert "CAPSTAN_GRPC_LISTEN" not in gw.env
    assert gw.env["CAPSTAN_TRAINER_ADDR"] == "127.0.0.1:4003"
    assert gw.health_url == "http://127.0.0.1:8080/healthz"


def test_wildcard_host_is_reached_on_loopback(paths: Paths) -> None:
    ports = Ports(1, 2, 3, 4, 5, http=9000, http_host="0.0.0.0")  # noqa: S104
    gw = components(paths, ports)["gateway"]
    assert gw.env["CAPSTAN_HTTP_LISTEN"] == "0.0.0.0:9000"
    assert ports.api_url == "http://127.0.0.1:9000"


def test_agents_join_the_default_group(paths: Paths, ports: Ports) -> None:
    table = components(paths, ports, default_rg="rsg-1", hostname="box")
    ta, ia = table["trainer-agent"], table["inference-agent"]
    assert ta.argv == [str(BIN / "capstan-trainer-agent"), "--ready-file", str(paths.run / "trainer-agent.ready")]
    assert ia.argv[0] == str(BIN / "capstan-inference-agent")
    assert ta.env["CAPSTAN_RESOURCE_GROUP"] == "rsg-1"
    assert ta.env["CAPSTAN_NODE_NAME"] == "box-trainer"
    assert ia.env["CAPSTAN_NODE_NAME"] == "box-inference"
    assert ta.env["CAPSTAN_AGENT_DIR"] == str(paths.agents / "box-trainer")
    assert ta.env["CAPSTAN_SCHEDULER_ADDR"] == "127.0.0.1:4002"


def test_extra_agents_declare_capacity(paths: Paths, ports: Ports) -> None:
    save_extra_agents(paths, {"gpu1": ExtraAgent("gpu1", "rsg-2", cpu=8, memory_gib=64, gpus="A100:8")})
    table = components(paths, ports, default_rg="rsg-1", hostname="box")
    a = table["agent-gpu1"]
    assert a.argv[0] == str(BIN / "capstan-trainer-agent")
    assert a.env["CAPSTAN_RESOURCE_GROUP"] == "rsg-2"
    assert a.env["CAPSTAN_NODE_NAME"] == "gpu1"
    assert (a.env["CAPSTAN_NODE_CPU"], a.env["CAPSTAN_NODE_MEMORY_GIB"], a.env["CAPSTAN_NODE_GPUS"]) == (
        "8",
        "64",
        "A100:8",
    )
    assert stop_order(table)[0] == ["trainer-agent", "inference-agent", "agent-gpu1"]
    assert stop_order(table)[1:] == [["gateway"], list(SERVICES), ["nats"]]


def test_an_extra_agent_of_kind_inference_runs_the_inference_agent(paths: Paths, ports: Ports) -> None:
    save_extra_agents(paths, {"srv1": ExtraAgent("srv1", "rsg-2", cpu=4, kind="inference")})
    assert load_extra_agents(paths)["srv1"].kind == "inference"
    a = components(paths, ports, default_rg="rsg-1", hostname="box")["agent-srv1"]
    assert a.argv[0] == str(BIN / "capstan-inference-agent")
    assert a.env["CAPSTAN_NODE_NAME"] == "srv1" and a.env["CAPSTAN_INFERENCE_ADDR"]


def test_match_strings_are_specific_to_the_data_dir(paths: Paths, ports: Ports) -> None:
    for comp in components(paths, ports, default_rg="rsg-1").values():
        assert str(paths.root) in comp.match
        if comp.kind != "nats":
            assert comp.match in comp.argv  # /proc/<pid>/cmdline holds it


def test_ports_persist(paths: Paths) -> None:
    assert Ports.load(paths) is None
    ports = Ports.allocate(8080, "127.0.0.1")
    picked = [ports.nats, *(ports.grpc(s) for s in SERVICES)]
    assert len(set(picked)) == 5 and 8080 not in picked
    ports.save(paths)
    assert Ports.load(paths) == ports
    assert json.loads(paths.ports.read_text())["scheduler"] == ports.scheduler


def test_corrupt_ports_file_is_explained(paths: Paths) -> None:
    paths.ports.write_text("{oops")
    with pytest.raises(PlatformError, match="not valid JSON"):
        Ports.load(paths)


def test_process_env(paths: Paths, ports: Ports, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_GRPC_LISTEN", "0.0.0.0:1")  # noqa: S104 - ours to set, never inherited
    monkeypatch.setenv("CAPSTAN_TOKEN", "t")
    monkeypatch.setenv("CAPSTAN_LOG_LEVEL", "DEBUG")
    assert inherited_env() == {"CAPSTAN_LOG_LEVEL": "DEBUG"}
    save_env(paths, {"CAPSTAN_DATABASE_URL": "postgresql://x"})
    gw = components(paths, ports)["gateway"]
    env = process_env(gw, load_env(paths))
    assert "CAPSTAN_GRPC_LISTEN" not in env and "CAPSTAN_TOKEN" not in env
    assert env["CAPSTAN_DATABASE_URL"] == "postgresql://x"
    assert env["CAPSTAN_HTTP_LISTEN"] == "127.0.0.1:8080"
    assert env["PATH"]


def test_missing_executable(paths: Paths) -> None:
    comp = Component("x", "service", [str(paths.root / "nope")], {}, paths.root / "x.log", match="x")
    assert "does not exist" in (missing(comp) or "")


def test_every_trainer_agent_shares_one_storage_root(paths: Paths, ports: Ports) -> None:
    """Agents find durable training output under <data dir>/storage (CAPSTAN_STORAGE_DIR overrides it,
    inherited by all alike): up's agent and those of `agent start` must get the same data dir."""
    save_extra_agents(paths, {"n2": ExtraAgent("n2", "rsg-1"), "n3": ExtraAgent("n3", "rsg-1")})
    table = components(paths, ports, default_rg="rsg-1", hostname="box")
    trainers = [c for c in table.values() if c.argv[0].endswith("capstan-trainer-agent")]
    assert len(trainers) == 3
    assert {c.env["CAPSTAN_DATA_DIR"] for c in trainers} == {str(paths.root)}
    assert len({c.env["CAPSTAN_AGENT_DIR"] for c in trainers}) == 3  # each node its own instances
    assert all("CAPSTAN_STORAGE_DIR" not in c.env for c in trainers)  # never set per agent
