"""``capstan-trainer-agent``: run the trainer node agent until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from capstan_core import tracing
from capstan_core.service import until_terminated, write_ready_file

from .agent import TrainerAgent
from .settings import AgentSettings


async def _run(ready_file: str | None) -> None:
    settings = AgentSettings()
    agent = TrainerAgent(settings)
    await agent.start()
    if ready_file:
        write_ready_file(ready_file, agent.node_id)
    await until_terminated()
    await agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="capstan-trainer-agent")
    parser.add_argument("--ready-file", help="write the node id here once joined")
    args = parser.parse_args()
    settings = AgentSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s trainer-agent %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tracing.setup_tracing("trainer-agent")
    asyncio.run(_run(args.ready_file))


if __name__ == "__main__":
    main()
