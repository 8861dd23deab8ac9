"""A node agent's credentials: obtained once with a join token, kept in the agent's directory.

First start: the agent makes its own key pair, sends a certificate signing request and the join
token to the scheduler's TLS-only bootstrap port (the platform CA's certificate, which the agent
is given as a file, proves it talks to the real scheduler), and gets back its certificate
(``node:<node-id>``), the CA and the agents' NATS user. Later starts reuse them; the token is
no longer needed. Files live in ``<agent-dir>/credentials`` (0700, each file 0600).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import grpcutil, pki
from .credentials import NatsCredentials, TlsCredentials, private_dir, replace_secret
from .errors import Unauthenticated

log = logging.getLogger(__name__)

_KEY, _CERT, _CA, _NATS, _NODE = "node.key", "node.crt", "ca.crt", "agent.nats", "node.json"


class JoinRefused(RuntimeError):
    """The scheduler refused the join token or the request; retrying will not help."""


@dataclass(frozen=True)
class NodeCredentials:
    tls: TlsCredentials
    nats: NatsCredentials
    node_id: str
    resource_group_id: str
    node_name: str


def load(directory: Path) -> NodeCredentials | None:
    try:
        meta = json.loads((directory / _NODE).read_text())
        return NodeCredentials(
            tls=TlsCredentials(
                ca_pem=(directory / _CA).read_bytes(), cert_pem=(directory / _CERT).read_bytes(),
                key_pem=(directory / _KEY).read_bytes(),
            ),
            nats=NatsCredentials.from_json((directory / _NATS).read_bytes()),
            node_id=str(meta["node_id"]), resource_group_id=str(meta["resource_group_id"]),
            node_name=str(meta["node_name"]),
        )
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _save(directory: Path, creds: NodeCredentials) -> None:
    private_dir(directory)
    replace_secret(directory / _KEY, creds.tls.key_pem)
    replace_secret(directory / _CERT, creds.tls.cert_pem)
    replace_secret(directory / _CA, creds.tls.ca_pem)
    replace_secret(directory / _NATS, creds.nats.to_json())
    meta = {"node_id": creds.node_id, "resource_group_id": creds.resource_group_id, "node_name": creds.node_name}
    replace_secret(directory / _NODE, json.dumps(meta).encode())  # last: its presence means "complete"


def read_join_token(token: str, token_file: Path | None) -> str:
    if token.strip():
        return token.strip()
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except FileNotFoundError:
            pass
    return ""


async def bootstrap(
    *, directory: Path, bootstrap_addr: str, ca_pem: bytes, join_token: str, node_name: str, agent_kind: str,
    retry_s: float = 60.0,
) -> NodeCredentials:
    """Trade ``join_token`` for this node's credentials (retrying while the scheduler is unreachable)."""
    from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

    key = pki.new_key()
    csr = pki.make_csr(key, f"node-request:{node_name}")
    request = scheduler_pb2.BootstrapNodeRequest(
        join_token=join_token, node_name=node_name, agent_kind=agent_kind, csr_pem=csr
    )
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + retry_s, 0.2
    while True:
        async with grpcutil.bootstrap_channel(bootstrap_addr, ca_pem) as ch:
            try:
                resp = await scheduler_pb2_grpc.SchedulerStub(ch).BootstrapNode(request, timeout=15)
                break
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise JoinRefused(f"the scheduler refused to let {node_name} join: {e.details()}") from e
                if loop.time() > deadline:
                    raise JoinRefused(f"the scheduler's bootstrap port {bootstrap_addr} is not reachable") from e
                log.warning("cannot reach the scheduler's bootstrap port yet (%s); retrying", e.details())
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    creds = NodeCredentials(
        tls=TlsCredentials(ca_pem=resp.ca_pem, cert_pem=resp.certificate_pem, key_pem=pki.key_pem(key)),
        nats=NatsCredentials(user=resp.nats_user, password=resp.nats_password),
        node_id=resp.node_id, resource_group_id=resp.resource_group_id, node_name=node_name,
    )
    _save(directory, creds)
    log.info("node %s (%s) got its certificate; the join token is no longer needed", node_name, resp.node_id)
    return creds


async def ensure(
    *, directory: Path, node_name: str, resource_group: str, agent_kind: str, bootstrap_addr: str, ca_file: Path,
    join_token: str,
) -> NodeCredentials:
    """This node's credentials: the saved ones if they are for this node, else a bootstrap."""
    saved = load(directory)
    # A group given by name (the default "default") defers to the token the node joined with.
    same_group = not resource_group.startswith("rsg-") or resource_group == saved.resource_group_id if saved else False
    if saved is not None and saved.node_name == node_name and same_group:
        return saved
    if not join_token:
        raise Unauthenticated(
            f"node {node_name} has no credentials yet and no join token: ask the operator for one "
            f"(capstan nodes join-token create) and pass it as CAPSTAN_JOIN_TOKEN or CAPSTAN_JOIN_TOKEN_FILE"
        )
    if not bootstrap_addr:
        raise Unauthenticated("CAPSTAN_SCHEDULER_BOOTSTRAP_ADDR is not set: where does the scheduler take join tokens?")
    try:
        ca_pem = ca_file.read_bytes()
    except FileNotFoundError as e:
        raise Unauthenticated(
            f"the platform CA certificate is not at {ca_file}: copy it from the platform's secrets (ca.crt) "
            f"and point CAPSTAN_CA_FILE at it"
        ) from e
    return await bootstrap(
        directory=directory, bootstrap_addr=bootstrap_addr, ca_pem=ca_pem, join_token=join_token,
        node_name=node_name, agent_kind=agent_kind,
    )


class NodeAuthSettings(BaseSettings):
    """How a node agent gets its credentials (``CAPSTAN_*``); both agent kinds inherit these."""

    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    data_dir: Path = Path(".capstan")
    scheduler_bootstrap_addr: str = ""
    join_token: SecretStr = SecretStr("")
    join_token_file: Path | None = None
    # The platform CA's certificate (public): proves the bootstrap port is the real scheduler's.
    ca_file: Path | None = None

    @property
    def ca_path(self) -> Path:
        return self.ca_file if self.ca_file is not None else self.data_dir / "secrets" / "ca.crt"

    async def node_credentials(self, directory: Path, *, node_name: str, resource_group: str, agent_kind: str) -> NodeCredentials:
        return await ensure(
            directory=directory, node_name=node_name, resource_group=resource_group, agent_kind=agent_kind,
            bootstrap_addr=self.scheduler_bootstrap_addr, ca_file=self.ca_path,
            join_token=read_join_token(self.join_token.get_secret_value(), self.join_token_file),
        )
