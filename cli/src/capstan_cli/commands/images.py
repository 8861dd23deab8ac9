"""Training images: list them, import an OCI image archive (SPEC §3.6)."""

from __future__ import annotations

from pathlib import Path

import click

from ..common import common_options, config
from ..output import print_json, table


@click.group("image")
def image() -> None:
    """Training images."""


@image.command("list")
@common_options
def image_list() -> None:
    """Built-in images (with their frameworks, modes and libraries) and imported ones."""
    cfg = config()
    with cfg.client() as client:
        items = (client.get("/images") or {}).get("items") or []
    if cfg.json_output:
        print_json(items)
        return
    rows = [[i["name"], i["kind"], ", ".join(i["frameworks"]) or "-", ", ".join(i["modes"]),
             ", ".join(f"{k} {v}" for k, v in i["libraries"].items()) or "-"] for i in items]
    click.echo(table(["NAME", "KIND", "FRAMEWORKS", "MODES", "LIBRARIES"], rows))


@image.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--storage-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The platform storage [default: <data-dir>/storage, as the agents']")
@common_options
def image_import(archive: Path, storage_dir: Path | None) -> None:
    """Unpack an OCI image archive (docker save / skopeo oci-archive) into the platform's image cache,
    on the host that holds the platform storage; prints the image's name (sha256:<digest>)."""
    from capstan_trainer.images import ImageStore  # the trainer's code: the one way to unpack an image

    cfg = config()
    root = storage_dir or cfg.paths.root / "storage"
    click.echo(f"unpacking {archive} ...", err=True)
    try:
        name = ImageStore(root).import_archive(archive)
    except (ValueError, KeyError, OSError) as e:
        raise click.ClickException(f"{archive} is not an OCI image archive this platform can read: {e}") from e
    click.echo(name)
