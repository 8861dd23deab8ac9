"""``capstan-trainer-agent``: run the trainer node agent until SIGTERM."""

from __future__ import annotations

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


def main() -> None:
    agent_main("trainer-agent", AgentSettings().log_level, _run)


if __name__ == "__main__":
    main()
