"""The `par` command line: mounts the commands of `parcli.commands`."""

from __future__ import annotations

from typing import Annotated

import typer

from parcli import __version__
from parcli.commands.bench import bench
from parcli.commands.classes import classes_command
from parcli.commands.common import command_app, one_line_usage_errors
from parcli.commands.convert import convert_weights
from parcli.commands.eval import eval_digits
from parcli.commands.fid import fid_command
from parcli.commands.generate import generate
from parcli.commands.info import info
from parcli.commands.sample import sample
from parcli.commands.train import app as train_app
from parcli.commands.weights import app as weights_app
from parcli.errors import loads_torch

one_line_usage_errors()
app = command_app(
    "par",
    "Parallelized Autoregressive (PAR) visual generation with LlamaGen-family transformers.",
    completion=True,
)


def show_version(asked: bool) -> None:
    if asked:
        print(f"parcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=show_version,
            is_eager=True,
            help="Print the version and stop.",
        ),
    ] = False,
) -> None:
    """Parallelized Autoregressive (PAR) visual generation with LlamaGen-family transformers."""


# The commands that compute import torch first, while a signal still ends start-up at once
# (`parcli.errors`); the others (classes, info, weights list, path, remove) never load it.
app.command()(loads_torch(generate))
app.command("classes")(classes_command)
app.command()(info)
app.command("convert-weights")(loads_torch(convert_weights))
app.command()(loads_torch(bench))
app.command()(loads_torch(sample))
app.command("eval")(loads_torch(eval_digits))
app.command("fid")(loads_torch(fid_command))
for group, names in ((train_app, ("vq", "gpt", "classifier")), (weights_app, ("fetch",))):
    for registered in group.registered_commands:
        if registered.name in names:
            registered.callback = loads_torch(registered.callback)
app.add_typer(train_app, name="train", help="Train a VQ tokenizer or a PAR transformer.")
app.add_typer(weights_app, name="weights", help="List, fetch, locate and remove checkpoints.")
