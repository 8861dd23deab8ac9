"""``capstan-inference-agent``: run the inference node agent until SIGTERM (settings: ``CAPSTAN_*``,
:class:`.settings.InferenceAgentSettings`)."""

from __future__ import annotations

from capstan_core.service import agent_main, until_terminated, write_ready_file

from .agent import InferenceAgent
from .settings import InferenceAgentSettings


async def _run(ready_file: str | None) -> None:
    agent = InferenceAgent(InferenceAgentSettings())
    await agent.start()
    if ready_file:
        write_ready_file(ready_file, agent.node_id)
    await until_terminated()
    await agent.stop()


def main() -> None:
    agent_main("inference-agent", InferenceAgentSettings().log_level, _run)


if __name__ == "__main__":
    main()
