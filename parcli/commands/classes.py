"""`par classes`: which class id is which, for a model's class set (offline, no download)."""

from __future__ import annotations

from typing import Annotated

import typer

from parcli.commands.common import CatalogueOption, console, err_console, inert, user_errors
from parcli.errors import UserError
from parcli.io.locate import catalogue_class_set


def classes_command(
    query: Annotated[
        str | None, typer.Argument(help="Show only ids equal to this, or names containing it.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            show_default=False,
            help="Catalogue entry or family; the catalogue's default family when not given.",
        ),
    ] = None,
    catalogue: CatalogueOption = None,
) -> None:
    """List or search the class ids and names that --class accepts."""
    with user_errors():
        names = catalogue_class_set(model, None)
        ids = names.search(query) if query is not None else list(range(len(names)))
        if not ids:
            raise UserError(f"no {names.name} class matches {query!r}; try a shorter word")
        width = len(str(len(names) - 1))
        # `out`: plain text as given, no markup, emoji codes or wrapping.
        for class_id in ids:
            listed = inert(", ".join(names.names[class_id]))
            console.out(f"{class_id:>{width}}  {listed}", highlight=False)
        counted = f"{len(ids)} of {len(names)} {names.name} classes (names: {names.source})"
        err_console.out(inert(counted), highlight=False)
