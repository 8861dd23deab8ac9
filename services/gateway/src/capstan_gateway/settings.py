"""Gateway settings from the environment (``CAPSTAN_*``); unsafe or incomplete values fail at start."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = {"localhost"}


def split_host_port(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) -> (host, port). Raises ValueError with a usable message."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:8080, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0..65535)")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    data_dir: Path = Path(".capstan")
    # Empty: <data_dir>/secrets (the gateway's certificate for calling the services).
    secrets_dir: Path | None = None
    http_listen: str = "127.0.0.1:8080"
    scheduler_addr: str = ""
    trainer_addr: str = ""
    # Not called by any route yet; held so their routes need no new plumbing.
    registry_addr: str = ""
    inference_addr: str = ""
    # Only this turns authentication off; the gateway then logs a warning at every start.
    auth_disabled: bool = False
    log_level: str = "INFO"
    # The identity store (accounts, keys, policies, audit); empty: SQLite in <data_dir>/identity.db.
    identity_database_url: str = ""
    # How long a session from POST /api/v1/login lasts.
    session_ttl_s: float = 12 * 3600.0
    # Seconds a call to an owning service may take before the route answers 503.
    rpc_timeout_s: float = 10.0
    # Invocation of online services (services/gateway/src/capstan_gateway/invoke). NATS: limit counters,
    # metric samples and replica load shared by every gateway process (empty: this process's memory).
    nats_url: str = ""
    gateway_id: str = ""  # names this process's metric samples; empty: a random id per start
    invoke_read_timeout_s: float = 600.0  # an instance silent this long mid-answer is given up on
    invoke_grpc_listen: str = ""  # host:port of gRPC invocation (x-ti-service); empty: off
    metrics_public: bool = False  # true: GET /metrics needs no token (a scraper inside a trusted network)

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir if self.secrets_dir is not None else self.data_dir / "secrets"

    @field_validator("http_listen")
    @classmethod
    def _listen_is_host_port(cls, v: str) -> str:
        split_host_port(v)
        return v

    @field_validator("invoke_grpc_listen")
    @classmethod
    def _grpc_listen_is_host_port(cls, v: str) -> str:
        if v.strip():
            split_host_port(v.strip())
        return v.strip()

    @field_validator("scheduler_addr", "trainer_addr")
    @classmethod
    def _required_addr(cls, v: str, info: ValidationInfo) -> str:
        if not v.strip():
            name = info.field_name or "address"
            raise ValueError(
                f"CAPSTAN_{name.upper()} is not set: the gateway calls this service for its routes "
                "(e.g. 127.0.0.1:50051)"
            )
        return v.strip()

    @field_validator("rpc_timeout_s", "invoke_read_timeout_s")
    @classmethod
    def _positive_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0 seconds")
        return v

    @model_validator(mode="after")
    def _no_open_gateway_on_the_network(self) -> GatewaySettings:
        # Auth off is a local-development switch: serving it beyond this machine would hand
        # every caller on the network administrator rights, so refuse rather than warn.
        host, _ = split_host_port(self.http_listen)
        if self.auth_disabled and not is_loopback(host):
            raise ValueError(
                f"CAPSTAN_AUTH_DISABLED=true with CAPSTAN_HTTP_LISTEN={self.http_listen} would expose an "
                "unauthenticated API beyond this machine; listen on 127.0.0.1 or turn authentication on"
            )
        return self
