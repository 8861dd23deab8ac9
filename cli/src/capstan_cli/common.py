"""What every command shares: the --data-dir/--api/--json options, argument parsing helpers, errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .client import ApiError, ClientConfig
from .platform import PlatformError

F = TypeVar("F", bound=Callable[..., Any])


def config() -> ClientConfig:
    return click.get_current_context().find_root().ensure_object(ClientConfig)


def _store(attr: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None and value is not False:  # a leaf's unset option keeps the group's value
            setattr(ctx.find_root().ensure_object(ClientConfig), attr, value)
        return value

    return callback


def common_options(f: F) -> F:
    """--data-dir, --api and --json, accepted before the command (``capstan --json task list``) or after it."""
    f = click.option(
        "--json",
        "json_output",
        is_flag=True,
        default=False,
        expose_value=False,
        callback=_store("json_output"),
        help="Print JSON (for scripts).",
    )(f)
    f = click.option(
        "--api",
        metavar="URL",
        expose_value=False,
        callback=_store("api"),
        help="REST API address [env CAPSTAN_API; default: DATA_DIR/run/api-url].",
    )(f)
    f = click.option(
        "--data-dir",
        metavar="DIR",
        expose_value=False,
        callback=_store("data_dir"),
        help="The platform's data directory [env CAPSTAN_DATA_DIR; default ./.capstan].",
    )(f)
    return f


class CapstanGroup(click.Group):
    """Prints the message of an API or platform error on stderr and exits 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ApiError, PlatformError) as e:
            message = e.message if isinstance(e, ApiError) else str(e)
            click.echo(f"error: {message}", err=True)
            sys.exit(1)


def say_for(cfg: ClientConfig) -> Callable[[str], None]:
    """Progress goes to stdout, or to stderr when stdout carries JSON."""
    return lambda line: click.echo(line, err=cfg.json_output)


def parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{v!r}: use KEY=VALUE", param_hint="--tag")
        tags[key.strip()] = value
    return tags


def json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint=option) from e
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object ({...})", param_hint=option)
    return value


def one_of(text: str | None, file: str | None, option: str, required: bool) -> str | None:
    """The value of ``--X`` or the contents of ``--X-file``; not both."""
    if text is not None and file is not None:
        raise click.UsageError(f"give {option} or {option}-file, not both")
    if file is not None:
        return Path(file).read_text()
    if text is None and required:
        raise click.UsageError(f"give {option} or {option}-file")
    return text


def number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x
