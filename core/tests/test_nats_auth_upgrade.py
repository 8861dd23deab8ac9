"""An install's NATS authorization block follows this version's permissions (#8 widened the gateway's)."""

from __future__ import annotations

import json
from pathlib import Path

from capstan_core import credentials, natsauth


def test_an_older_authorization_block_is_written_again_keeping_the_passwords(tmp_path: Path) -> None:
    secrets = credentials.ensure_platform_secrets(tmp_path / "s", bcrypt_rounds=4)
    conf = secrets / credentials.NATS_AUTH
    users = json.loads(conf.read_text().removeprefix("authorization "))["users"]
    gw = next(u for u in users if u["user"] == natsauth.GATEWAY_USER)
    gw["permissions"]["publish"]["allow"] = [a for a in gw["permissions"]["publish"]["allow"] if "evt" not in a]
    conf.write_text("authorization " + json.dumps({"users": users}))  # as an install before #8 wrote it
    password = credentials.load_nats(secrets, natsauth.GATEWAY_USER).password
    credentials.ensure_platform_secrets(secrets, bcrypt_rounds=4)
    users = json.loads(conf.read_text().removeprefix("authorization "))["users"]
    gw = next(u for u in users if u["user"] == natsauth.GATEWAY_USER)
    assert "capstan.evt.account.>" in gw["permissions"]["publish"]["allow"]
    assert credentials.load_nats(secrets, natsauth.GATEWAY_USER).password == password
    before = conf.read_text()
    credentials.ensure_platform_secrets(secrets, bcrypt_rounds=4)
    assert conf.read_text() == before  # unchanged permissions: not rewritten
