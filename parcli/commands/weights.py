"""`par weights`: list, fetch, locate and remove the checkpoints of the catalogue."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from parcli.commands.common import (
    CatalogueOption,
    command_app,
    console,
    err_console,
    inert,
    user_errors,
)
from parcli.commands.downloads import fetch_with_progress
from parcli.io import hub
from parcli.io.catalogue import Catalogue, Entry, load_catalogue

app = command_app("weights", "List, download, locate and remove model weights.")

RegionsOption = Annotated[
    int | None, typer.Option("--regions", "-n", help="With a family name: its n-region member.")
]


def _select(catalogue: Catalogue, names: list[str], regions: int | None) -> list[Entry]:
    """Entries meant by entry or family names; a family without --regions means all members."""
    chosen: list[Entry] = []
    families = catalogue.families
    for name in names:
        key = name.strip().lower()
        if key in families and regions is None:
            chosen.extend(families[key])
        elif key in families or regions is not None:
            chosen.append(catalogue.resolve(key, regions))
        else:
            chosen.append(catalogue.get(key))
    return list(dict.fromkeys(chosen))


def _where(entry: Entry) -> str:
    if entry.is_packaged:
        return "packaged"
    return str(hub.converted_path(entry)) if hub.is_present(entry) else "-"


def _row(entry: Entry) -> dict:
    record = hub.read_record(entry) or {}
    present = hub.is_present(entry)
    return {
        "name": entry.name,
        "kind": entry.kind,
        "family": entry.family,
        "regions": entry.regions,
        "arch": entry.arch,
        "download_bytes": None if entry.is_packaged else entry.approx_size_bytes,
        "licence": entry.licence,
        "present": present,
        "packaged": entry.is_packaged,
        "path": str(hub.converted_path(entry)),
        "source": entry.source,
        "sha256": record.get("sha256") if present else None,
    }


@app.command("list")
def list_weights(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    catalogue_path: CatalogueOption = None,
) -> None:
    """Every catalogue entry: family, n, architecture, download size, licence, local copy."""
    with user_errors():
        entries = load_catalogue().entries()
        if as_json:
            print(json.dumps([_row(e) for e in entries], indent=2))
            return

        def shown(text: object) -> str:  # the user's text: never markup or terminal control
            return escape(inert(str(text)))

        table = Table(
            title=f"Model weights (cache: {shown(hub.cache_dir())})", title_justify="left"
        )
        for column in ("name", "family", "n", "arch", "download", "licence", "present"):
            table.add_column(
                column,
                justify="right" if column in ("n", "download") else "left",
                no_wrap=column in ("name", "family"),  # names are typed back: never cut them
            )
        for entry in entries:
            size = "-" if entry.is_packaged else hub.human_size(entry.approx_size_bytes)
            where = shown(_where(entry))
            present = f"[green]yes[/] ({where})" if hub.is_present(entry) else "[dim]no[/]"
            regions = "-" if entry.regions is None else entry.regions
            cells = (entry.name, entry.family or "-", regions, entry.arch, size, entry.licence)
            table.add_row(*map(shown, cells), present)
        console.print(table)


@app.command("fetch")
def fetch(
    names: Annotated[list[str], typer.Argument(help="Entry or family names.")],
    regions: RegionsOption = None,
    keep_original: Annotated[
        bool,
        typer.Option(
            help="Keep the published file beside the converted one (also "
            "PARCLI_KEEP_ORIGINAL=1); without it, only the converted copy stays."
        ),
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(
            help="Store the transformers as published (keep), or as fp32, bf16 or fp16: bf16 "
            "halves a float32 file, and its tokens then differ from float32's."
        ),
    ] = "keep",
    catalogue_path: CatalogueOption = None,
) -> None:
    """Download, convert and verify checkpoints (always with the tokenizer they need)."""
    from parcli.engine.dtypes import storage_dtype  # torch: when the command runs, not for --help

    with user_errors():
        catalogue = load_catalogue()
        wanted = _select(catalogue, names, regions)
        pairs = ((entry, catalogue.tokenizer_for(entry)) for entry in wanted)
        offline = hub.offline_requested(False)
        storage_dtype(dtype)  # an unknown name is one line, before any download
        for entry in dict.fromkeys(each for pair in pairs for each in pair):
            # The tokenizer decodes in float32 whatever is asked, so it is stored as published.
            stored = dtype if entry.kind == "gpt" else "keep"
            if hub.is_present(entry):
                console.print(
                    f"{entry.name}: present ({_where(entry)})", highlight=False, markup=False
                )
                continue
            if offline:
                if hub.local_download(entry) is None:
                    raise hub.FetchError(
                        f"{entry.name} is not downloaded and offline mode is on "
                        "(PARCLI_OFFLINE or HF_HUB_OFFLINE); unset it to download"
                    )
                path = hub.fetch(entry, offline=True, keep_original=keep_original, dtype=stored)
            else:
                path = fetch_with_progress(entry, console, keep_original, stored)
            console.print(f"{entry.name}: ready at {path}", highlight=False, markup=False)


@app.command("path")
def path(
    name: Annotated[str, typer.Argument(help="Entry or family name.")],
    regions: RegionsOption = None,
    catalogue_path: CatalogueOption = None,
) -> None:
    """Print where the converted file of NAME is (exit code 1 when it is not downloaded yet)."""
    with user_errors():
        # A family without --regions: its member with the most regions, as generation picks.
        entry = _select(load_catalogue(), [name], regions)[-1]
        print(hub.converted_path(entry))
        if not hub.is_present(entry):
            err_console.print(
                f"{entry.name} is not downloaded yet; run `par weights fetch {entry.name}`",
                style="yellow",
                highlight=False,
            )
            raise typer.Exit(1)


@app.command("remove")
def remove(
    names: Annotated[list[str], typer.Argument(help="Entry or family names.")],
    regions: RegionsOption = None,
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Also delete the downloaded original (and its copy in the Hugging Face cache).",
        ),
    ] = False,
    catalogue_path: CatalogueOption = None,
) -> None:
    """Delete converted weights from the cache to free disk space."""
    with user_errors():
        for entry in _select(load_catalogue(), names, regions):
            freed = hub.remove(entry, download=download)
            if freed:
                console.print(f"{entry.name}: removed ({hub.human_size(freed)} freed)")
            else:
                console.print(f"{entry.name}: not downloaded, nothing to remove")
