"""Which files a command uses: a catalogue name (fetched on first use) or explicit paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from parcli.commands.weights import ensure_model_files
from parcli.config import SUPPORTED_REGIONS
from parcli.io.catalogue import Entry, load_catalogue
from parcli.pipeline import Pipeline, PipelineError, load_pipeline


@dataclass(frozen=True)
class ModelFiles:
    name: str
    checkpoint: Path
    tokenizer: Path
    cfg_scale: float | None  # None: take it from the checkpoint's metadata


def entry_files(entries: list[Entry], offline: bool, console: Console, quiet: bool) -> list[Path]:
    """Local paths of catalogue entries, downloading and converting what is missing."""
    paths = ensure_model_files(entries, offline=offline, console=None if quiet else console)
    return [paths[entry.name] for entry in entries]


def locate_model(
    model: str | None,
    regions: int | None,
    checkpoint: Path | None,
    tokenizer: Path | None,
    offline: bool,
    console: Console,
    quiet: bool = False,
) -> ModelFiles:
    if checkpoint is not None:
        if tokenizer is None and model is None:
            raise PipelineError("--checkpoint needs --tokenizer (or --model naming its tokenizer)")
        if tokenizer is None:
            catalogue = load_catalogue()
            (tokenizer,) = entry_files(
                [catalogue.tokenizer_for(catalogue.resolve(model))], offline, console, quiet
            )
        return ModelFiles(checkpoint.name, checkpoint, tokenizer, None)
    catalogue = load_catalogue()
    entry = catalogue.resolve(model or catalogue.default_family, regions)
    wanted = [entry] if tokenizer is not None else [entry, catalogue.tokenizer_for(entry)]
    paths = entry_files(wanted, offline, console, quiet)
    return ModelFiles(entry.name, paths[0], tokenizer or paths[1], entry.cfg_scale)


def parse_ints(text: str, option: str) -> list[int]:
    """`1,4,16` -> [1, 4, 16]: positive integers, in the order given."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PipelineError(
            f"{option} takes comma-separated integers, e.g. 1,4,16; got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise PipelineError(f"{option} needs positive integers, got {text!r}")
    return values


def parse_region_list(text: str) -> list[int]:
    """`--regions 1,4,16` -> [1, 4, 16], refusing counts PAR has no checkpoints for."""
    values = sorted(set(parse_ints(text, "--regions")))
    if any(n not in SUPPORTED_REGIONS for n in values):
        raise PipelineError(f"--regions must be among {SUPPORTED_REGIONS}, got {text!r}")
    return values


def load_pipelines(
    model: str | None,
    regions: list[int],
    checkpoint: Path | None,
    tokenizer: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    console: Console,
    quiet: bool = False,
    compile_model: bool | None = None,
) -> dict[int, Pipeline]:
    """One loaded pipeline per region count, each checked to be trained for it."""
    pipelines = {}
    for n in regions:
        files = locate_model(model, n, checkpoint, tokenizer, offline, console, quiet)
        pipe = load_pipeline(
            files.checkpoint,
            files.tokenizer,
            device,
            dtype,
            files.name,
            files.cfg_scale,
            compile_model,
        )
        pipe.check_regions(n)
        pipelines[n] = pipe
    return pipelines
