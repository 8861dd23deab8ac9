"""``capstan-trainer-agent``: run the trainer node agent until SIGTERM.

Settings come from ``CAPSTAN_*`` environment variables (:class:`AgentSettings`); ``--storage-dir`` and
``--output-sync-s`` are the flag forms of ``CAPSTAN_STORAGE_DIR`` and ``CAPSTAN_OUTPUT_SYNC_S``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from capstan_core.service import agent_main, until_terminated, write_ready_file

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


def _apply_flags(argv: Sequence[str]) -> list[str]:
    """Turn this agent's own flags into the environment its settings read; return the other arguments."""
    parser = argparse.ArgumentParser(prog="capstan-trainer-agent", add_help=False)
    parser.add_argument("--storage-dir", help="durable training output (default: <data dir>/storage)")
    parser.add_argument("--output-sync-s", type=float, help="seconds between copies of a running instance's output")
    args, rest = parser.parse_known_args(argv)
    if args.storage_dir:
        os.environ["CAPSTAN_STORAGE_DIR"] = args.storage_dir
    if args.output_sync_s is not None:
        os.environ["CAPSTAN_OUTPUT_SYNC_S"] = str(args.output_sync_s)
    return rest


def main(argv: Sequence[str] | None = None) -> None:
    rest = _apply_flags(sys.argv[1:] if argv is None else argv)
    agent_main("trainer-agent", AgentSettings().log_level, _run, rest)


if __name__ == "__main__":
    main()
