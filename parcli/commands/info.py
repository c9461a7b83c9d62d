"""`par info`: how a file written by `par generate` was made, from the recipe it carries."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from parcli.commands.common import console, inert, user_errors
from parcli.io.recipe import Recipe, read_recipe

_SAMPLES_SHOWN = 12


def info(
    file: Annotated[
        Path,
        typer.Argument(help="A PNG, an MP4/GIF/JPEG/WebP with its .json, or a --json manifest."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the recipe as JSON.")] = False,
) -> None:
    """Print how a generated file was made, and the command that makes it again."""
    with user_errors():
        recipe = read_recipe(file)
    if as_json:
        # ASCII escapes keep a hostile recipe's control characters inert and the JSON valid.
        text = json.dumps(recipe.to_dict(), indent=2, ensure_ascii=True)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    again = f"par generate --from {shlex.quote(str(file))}"
    if recipe.model is None:
        again += f" --checkpoint {shlex.quote(recipe.checkpoint)} --tokenizer TOKENIZER"
    for key, value in [*recipe_lines(recipe), ("again", again)]:
        console.print(f"{key:<10} {inert(value)}", markup=False, highlight=False, soft_wrap=True)


def recipe_lines(recipe: Recipe) -> list[tuple[str, str]]:
    model, run = recipe.model or "(a checkpoint file)", recipe.run
    guidance = f"{run.cfg_scale:g}" if run.cfg_scale > 1 else f"off ({run.cfg_scale:g})"
    top_k = str(run.top_k) if run.top_k else "off"
    top_p = f"{run.top_p:g}" if run.top_p < 1 else "off"
    samples = [
        f"{s.class_id}"
        + (f" {s.class_name}" if s.class_name and s.class_name != str(s.class_id) else "")
        + f" (#{s.index})"
        for s in recipe.samples[:_SAMPLES_SHOWN]
    ]
    more = len(recipe.samples) - _SAMPLES_SHOWN
    return [
        ("made by", f"parcli {recipe.parcli}"),
        ("model", model),
        ("weights", f"{recipe.checkpoint} (sha256 {recipe.checkpoint_sha256})"),
        ("tokenizer", recipe.tokenizer),
        ("regions", str(recipe.regions)),
        (
            "sampling",
            f"guidance {guidance}, temperature {run.temperature:g}, top-k {top_k}, top-p {top_p}",
        ),
        ("seed", f"{recipe.seed} (sample #k draws from seed and k alone)"),
        (
            "compute",
            f"{run.dtype} on {run.device}"
            + (f", {run.quantize} weights" if run.quantize else "")
            + (", the reference's kernels" if run.reference_kernels else "")
            + (", compiled" if run.compile else "")
            + (f", {run.strategy} (window {run.window})" if run.strategy != "par" else ""),
        ),
        ("pixels", f"enlarged {recipe.scale}x" + (f", {recipe.fps:g} fps" if recipe.fps else "")),
        (
            "samples",
            f"{len(recipe.samples)}: "
            + ", ".join(samples)
            + (f" and {more} more" if more > 0 else ""),
        ),
    ]
