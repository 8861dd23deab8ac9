"""The platform's secrets: generated once, kept 0600 in one directory, loaded per component.

Layout of the secrets directory (``<data-dir>/secrets`` by default, ``CAPSTAN_SECRETS_DIR``;
in the compose stack ``/run/secrets``, one compose secret per file)::

    ca.crt ca.key                 the platform CA (only the scheduler needs ca.key: it signs nodes)
    <component>.crt <component>.key   mutual-TLS identity of scheduler, trainer, registry, inference,
                                  gateway and admin (the operator's ``capstan`` command)
    <user>.nats                   NATS user and password (JSON) of each service, admin and agent
    nats-auth.conf                the nats-server ``authorization`` block: bcrypt hashes + permissions

Files are created with ``O_EXCL`` and mode 0600 in a 0700 directory; an existing file is never
overwritten, so a second ``capstan up`` (or a concurrent one) keeps the first secrets.
"""

from __future__ import annotations

import json
import os
import secrets as _secrets
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import grpc

from . import natsauth, pki

TLS_COMPONENTS = ("scheduler", "trainer", "registry", "inference", "gateway", "admin")
CA_CERT, CA_KEY, NATS_AUTH = "ca.crt", "ca.key", "nats-auth.conf"


class MissingCredentials(RuntimeError):
    """A component's credentials are not where they should be (say where, and how to make them)."""


def write_secret(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 unless it exists; returns whether it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def replace_secret(path: Path, data: bytes) -> None:
    """Write ``path`` atomically with mode 0600 (for files derived from the others, e.g. nats-auth.conf)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) and hold it to mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise MissingCredentials(
            f"{what} is missing ({path.name} in the secrets directory); `capstan up` creates the platform's "
            f"secrets at first start, `capstan secrets init` for a compose stack"
        ) from e


@dataclass(frozen=True)
class TlsCredentials:
    """The platform CA and one identity's certificate and key (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def identity(self) -> str:
        return pki.common_name(self.cert_pem)

    def server_credentials(self, require_client_auth: bool = True) -> grpc.ServerCredentials:
        pairs = [(self.key_pem, self.cert_pem)]
        if require_client_auth:
            return grpc.ssl_server_credentials(pairs, root_certificates=self.ca_pem, require_client_auth=True)
        return grpc.ssl_server_credentials(pairs)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


@dataclass(frozen=True)
class NatsCredentials:
    user: str
    password: str

    @property
    def inbox_prefix(self) -> str:
        # Replies to this user land under its own prefix, which only it may subscribe to.
        return natsauth.inbox_prefix(self.user)

    def to_json(self) -> bytes:
        return json.dumps({"user": self.user, "password": self.password}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> NatsCredentials:
        d = json.loads(data)
        return cls(user=str(d["user"]), password=str(d["password"]))


@dataclass(frozen=True)
class Credentials:
    """What one component holds: its gRPC identity and, if it talks to NATS, its NATS user."""

    tls: TlsCredentials
    nats: NatsCredentials | None = None


def load(secrets_dir: Path, component: str) -> Credentials:
    """The credentials of a platform component (a service or ``admin``) from the secrets directory."""
    tls = TlsCredentials(
        ca_pem=_read(secrets_dir / CA_CERT, "the platform CA certificate"),
        cert_pem=_read(secrets_dir / f"{component}.crt", f"{component}'s certificate"),
        key_pem=_read(secrets_dir / f"{component}.key", f"{component}'s key"),
    )
    nats_file = secrets_dir / f"{component}.nats"
    nats = NatsCredentials.from_json(nats_file.read_bytes()) if nats_file.exists() else None
    return Credentials(tls=tls, nats=nats)


def load_ca(secrets_dir: Path) -> pki.KeyPair:
    """The CA with its key: only the signer of node certificates (the scheduler) needs this."""
    return pki.KeyPair(
        cert_pem=_read(secrets_dir / CA_CERT, "the platform CA certificate"),
        key_pem=_read(secrets_dir / CA_KEY, "the platform CA key"),
    )


def load_nats(secrets_dir: Path, user: str) -> NatsCredentials:
    return NatsCredentials.from_json(_read(secrets_dir / f"{user}.nats", f"NATS credentials of {user}"))


def ensure_platform_secrets(secrets_dir: Path, bcrypt_rounds: int = 11) -> Path:
    """Create whatever of the platform's secrets is missing; returns the directory."""
    private_dir(secrets_dir)
    if not (secrets_dir / CA_CERT).exists():
        ca = pki.create_ca()
        # Key first: a CA certificate without its key could never sign anything.
        write_secret(secrets_dir / CA_KEY, ca.key_pem)
        write_secret(secrets_dir / CA_CERT, ca.cert_pem)
    ca = load_ca(secrets_dir)
    for component in TLS_COMPONENTS:
        if (secrets_dir / f"{component}.crt").exists():
            continue
        dns = [pki.server_name(component)] if component != "admin" else []
        pair = pki.issue(ca, "admin" if component == "admin" else f"svc:{component}", dns)
        write_secret(secrets_dir / f"{component}.key", pair.key_pem)
        write_secret(secrets_dir / f"{component}.crt", pair.cert_pem)
    new_user = False
    for user in natsauth.USERS:
        cred = NatsCredentials(user=user, password=_secrets.token_urlsafe(32))
        new_user |= write_secret(secrets_dir / f"{user}.nats", cred.to_json())
    if new_user or not (secrets_dir / NATS_AUTH).exists() or _nats_permissions_changed(secrets_dir):
        write_nats_auth(secrets_dir, bcrypt_rounds)
    for p in secrets_dir.iterdir():  # files an older version or an operator left readable
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o077:
            os.chmod(p, 0o600)
    return secrets_dir


def _nats_permissions_changed(secrets_dir: Path) -> bool:
    """Whether the written authorization block gives any user other permissions than this version's
    (an upgrade that widens one, e.g. the gateway's identity events: the block is written again)."""
    try:
        text = (secrets_dir / NATS_AUTH).read_text()
        users = json.loads(text.removeprefix("authorization "))["users"]
        written = {u["user"]: u["permissions"] for u in users}
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return written != {user: natsauth.permissions(user) for user in natsauth.USERS}


def write_nats_auth(secrets_dir: Path, bcrypt_rounds: int = 11) -> None:
    hashed = {}
    for user in natsauth.USERS:
        cred = load_nats(secrets_dir, user)
        hashed[user] = bcrypt.hashpw(cred.password.encode(), bcrypt.gensalt(rounds=bcrypt_rounds)).decode()
    replace_secret(secrets_dir / NATS_AUTH, natsauth.authorization_block(hashed).encode())
