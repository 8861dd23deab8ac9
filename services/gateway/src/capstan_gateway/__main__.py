"""``capstan-gateway [--ready-file PATH]``: serve the API with uvicorn until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from capstan_core import tracing

from .app import create_app
from .settings import GatewaySettings, split_host_port

log = logging.getLogger("capstan_gateway")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="capstan-gateway")
    parser.add_argument("--ready-file", help="write the URL http://host:port here once serving")
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings()
    except ValidationError as e:
        sys.exit(f"capstan-gateway: invalid settings:\n{e}")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tracing.setup_tracing("gateway")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    # uvloop when installed: the invocation routes relay every call and chunk through this loop.
    run = asyncio.run if importlib.util.find_spec("uvloop") is None else importlib.import_module("uvloop").run
    run(serve(settings, args.ready_file))


def _exit_cleanly(signum: int, frame: object) -> None:
    # uvicorn handles SIGTERM/SIGINT while serving (graceful shutdown), then re-raises the signal
    # to the handler it found: this one, so a requested stop ends with status 0, not "killed".
    raise SystemExit(0)


async def serve(settings: GatewaySettings, ready_file: str | None) -> None:
    host, port = split_host_port(settings.http_listen)
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_config=None, lifespan="on", server_header=False
    )
    server = uvicorn.Server(config)  # handles SIGTERM/SIGINT itself: graceful shutdown
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():  # failed before serving (port taken, lifespan error): surface it
            await serving
            sys.exit("capstan-gateway: the server stopped before it started serving")
        await asyncio.sleep(0.05)
    url = _url(host, server)
    log.info("gateway serving on %s", url)
    if ready_file:
        tmp = Path(ready_file + ".tmp")
        tmp.write_text(url)
        tmp.replace(ready_file)
    await serving


def _url(host: str, server: uvicorn.Server) -> str:
    port = server.servers[0].sockets[0].getsockname()[1]  # the real port when listening on :0
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard listen is reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


if __name__ == "__main__":
    main()
