#!/usr/bin/env python
"""Export a Capstan event log (the whole CAPSTAN_EVENTS stream) as JSON Lines, for the simulator's what-if replay.

One line per event, as stored: {"seq", "subject", "t", "type", "version", "data"} (docs/simulation.md).

  .venv/bin/python scripts/export_events.py --data-dir .capstan --out events.jsonl
  .venv/bin/python scripts/export_events.py --nats nats://127.0.0.1:4222 > events.jsonl
  .venv/bin/python scripts/simulate.py --event-log events.jsonl --policy '{"ResourceRule": {...}}'

Without --nats the NATS port comes from DATA_DIR/run/ports.json, written by `capstan up`
(DATA_DIR: --data-dir, else $CAPSTAN_DATA_DIR, else ./.capstan). NATS refuses anonymous clients:
the export connects as the operator (`admin`), whose credentials are in DATA_DIR/secrets/admin.nats
(--secrets-dir for another place). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import nats
from nats.errors import NoServersError
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "scheduler" / "src"))

from capstan_core import credentials  # noqa: E402
from capstan_core.streams import EVENTS_STREAM  # noqa: E402
from capstan_scheduler.sim.eventlog import export_event_log  # noqa: E402


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("CAPSTAN_DATA_DIR") or ".capstan").expanduser()


def admin_credentials(args: argparse.Namespace) -> credentials.NatsCredentials:
    secrets = Path(args.secrets_dir) if args.secrets_dir else _data_dir(args) / "secrets"
    try:
        return credentials.load_nats(secrets, "admin")
    except credentials.MissingCredentials as e:
        raise SystemExit(f"no operator NATS credentials in {secrets}: pass --secrets-dir ({e})") from None


def nats_url(args: argparse.Namespace) -> str:
    if args.nats:
        return str(args.nats)
    data_dir = _data_dir(args)
    ports = data_dir / "run" / "ports.json"
    try:
        port = int(json.loads(ports.read_text())["nats"])
    except FileNotFoundError:
        raise SystemExit(f"{ports} not found: pass --nats URL, or --data-dir of a platform started with capstan up") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{ports} does not name a NATS port ({e})") from None
    return f"nats://127.0.0.1:{port}"


async def export(url: str, admin: credentials.NatsCredentials, out: TextIO, stream: str, quiet: bool) -> int:
    started = time.monotonic()
    last_report = [started]

    def progress(commits: int, total: int, events: int) -> None:
        now = time.monotonic()
        if quiet or (now - last_report[0] < 2 and commits < total):
            return
        last_report[0] = now
        print(f"export: {commits}/{total} commits, {events} events, {now - started:.1f} s", file=sys.stderr, flush=True)

    async def on_error(e: Exception) -> None:  # nats-py's default prints a traceback per failed attempt
        if not quiet:
            print(f"export: NATS: {type(e).__name__}: {e}", file=sys.stderr)

    nc = await nats.connect(
        url, connect_timeout=5, max_reconnect_attempts=3, error_cb=on_error, user=admin.user, password=admin.password,
        inbox_prefix=admin.inbox_prefix,
    )
    try:
        return await export_event_log(nc.jetstream(), out, stream=stream, progress=progress, progress_every=5_000)
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", help="NATS URL, e.g. nats://127.0.0.1:4222")
    p.add_argument("--data-dir", help="a platform's data dir (reads run/ports.json) [env CAPSTAN_DATA_DIR; ./.capstan]")
    p.add_argument("--secrets-dir", help="the platform's secrets (admin.nats) [DATA_DIR/secrets]")
    p.add_argument("--out", default="-", help="output file ('-': stdout)")
    p.add_argument("--stream", default=EVENTS_STREAM)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    url = nats_url(args)
    admin = admin_credentials(args)
    tmp = Path(args.out + ".part")
    try:
        if args.out == "-":
            n = asyncio.run(export(url, admin, sys.stdout, args.stream, args.quiet))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                n = asyncio.run(export(url, admin, f, args.stream, args.quiet))
            tmp.replace(args.out)
    except (TimeoutError, NoServersError, NotFoundError) as e:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"export from {url} failed: {type(e).__name__}: {e}") from None
    if not args.quiet:
        print(f"export: {n} events from {url} stream {args.stream}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
