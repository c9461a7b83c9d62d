"""Which files a command uses: a catalogue name (fetched on first use) or explicit paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from parcli.commands.weights import ensure_model_files
from parcli.pipeline import PipelineError
from parcli.registry import Entry, load_catalogue


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
