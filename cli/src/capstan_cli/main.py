"""Entry point of the ``capstan`` command."""

from __future__ import annotations

import click

from .commands import task_ops  # noqa: F401 - registers its commands on the task group
from .commands.accounts import COMMANDS as ACCOUNT_COMMANDS
from .commands.credentials_cmds import secrets
from .commands.demo import demo
from .commands.events import events
from .commands.groups import nodes, rg
from .commands.images import image
from .commands.models import model
from .commands.platform_cmds import agent, down, ps, restart_component, up
from .commands.services import svc
from .commands.tasks import task
from .common import CapstanGroup, common_options


@click.group(cls=CapstanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
def cli() -> None:
    """Capstan, a self-hosted ML platform.

    \b
    Start it on this machine:   capstan up --data-dir DIR --port 8080
    Run a task on it:           capstan task submit --name hello --command 'echo hello' --wait
    Stop it:                    capstan down --data-dir DIR

    The client commands find the API with --api, env CAPSTAN_API, or DATA_DIR/run/api-url,
    and the token in env CAPSTAN_TOKEN, DATA_DIR/session (capstan login) or DATA_DIR/admin-token.
    """


for command in (up, down, ps, restart_component, agent, rg, nodes, task, image, model, demo, secrets, events, svc,
                *ACCOUNT_COMMANDS):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="capstan")


if __name__ == "__main__":
    main()
