"""`par sample`: the FID protocol's images of every class, into the ADM evaluator's `.npz`."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from parcli.commands.common import (
    BATCH_HELP,
    CatalogueOption,
    OfflineOption,
    QuietOption,
    command_line,
    console,
    err_console,
    old_spellings,
    parse_classes,
    run_options,
    user_errors,
    waiting_status,
    warn_if_emulated,
)
from parcli.commands.downloads import model_fetcher
from parcli.io.locate import model_files
from parcli.options import RunOptions

if TYPE_CHECKING:  # torch loads when the command runs, not for --help
    from parcli.quality.ranks import Ranks
    from parcli.quality.shards import SampleRun, Shard


@run_options()
@old_spellings(out=("--out", "output"))
def sample(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder of the run (made if new).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Catalogue entry or family.")
    ] = None,
    regions: Annotated[int | None, typer.Option(help="PAR regions: 1, 4 or 16.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A converted transformer.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="A converted VQ tokenizer.")] = None,
    per_class: Annotated[int, typer.Option(help="Images of every class.")] = 50,
    classes: Annotated[
        str | None,
        typer.Option(
            show_default=False, help="Classes to sample, e.g. 0-9,207; all when not given."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Image k of class c draws from (seed, c x K + k).")] = 0,
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = 32,
    shard_size: Annotated[int, typer.Option(help="Images written (and resumed) together.")] = 1000,
    image_size_eval: Annotated[
        int | None,
        typer.Option(
            show_default=False, help="Resize to this side (bicubic); the model's when not given."
        ),
    ] = None,
    png: Annotated[bool, typer.Option(help="Also keep one PNG per image.")] = False,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
    catalogue: CatalogueOption = None,
    run: dict | None = None,
) -> None:
    """Sample K images of every class into OUT/samples.npz (runs under torchrun too)."""
    from parcli.pipeline import open_pipeline
    from parcli.quality.ranks import Ranks
    from parcli.quality.shards import SampleSettings, start_run

    with user_errors():
        ranks = Ranks.from_environment()
        options = RunOptions.resolve(**{**run, "device": ranks.device(run["device"])})
        ranks.start(options.torch_device)
        try:
            started = time.perf_counter()
            if ranks.is_first and not quiet:
                warn_if_emulated(options.torch_device, options.torch_dtype)
            fetch = model_fetcher(offline, quiet or not ranks.is_first)
            files = model_files(model, regions, checkpoint, tokenizer, fetch)
            # Images go to disk shard by shard: one batch of them is held at a time.
            pipe = open_pipeline(files, options, regions, batch_size)
            wanted = parse_classes(classes, pipe.model.cfg.num_classes)
            settings = SampleSettings(
                wanted, per_class, seed, batch_size, shard_size, image_size_eval, png
            )
            run_state, complete = start_run(output, pipe, settings, files, ranks)
            if complete:
                if ranks.is_first:
                    console.print(f"{escape(str(output))} is complete already", highlight=False)
                return
            _generate(run_state, ranks, quiet or not ranks.is_first)
            ranks.barrier()
            if ranks.is_first:
                target = run_state.merge(command_line(), ranks.world, time.perf_counter() - started)
                if not quiet:
                    console.print(
                        f"{settings.count} images · {pipe.passes_per_image():.4g} passes each · "
                        f"{ranks.world} process(es) -> {escape(str(target))}",
                        highlight=False,
                    )
        finally:
            ranks.stop()


def _generate(run: SampleRun, ranks: Ranks, quiet: bool) -> None:
    """Make this process's shards, with a bar in images (a line per shard when quiet)."""
    todo = run.todo(ranks.rank, ranks.world)
    if quiet:

        def report(shard: Shard, seconds: float) -> None:
            err_console.print(
                f"shard {shard.number + 1}/{len(run.shards)}: {shard.size} images in "
                f"{seconds:.1f} s ({shard.size / seconds:.2f} images/s)",
                highlight=False,
            )

        run.run(todo, on_shard=report if ranks.is_first else None)
        return
    batch, passes = run.settings.batch_size, run.pipe.plan.num_passes
    batches = [
        min(batch, shard.stop - start)
        for shard in todo
        for start in range(shard.start, shard.stop, batch)
    ]
    done_before = [0, *itertools.accumulate(batches)]
    shown = f"rank {ranks.rank}/{ranks.world}: images" if ranks.world > 1 else "images"
    with Progress(
        TextColumn(f"[bold]{shown}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("sample", total=done_before[-1], rate=waiting_status(run.pipe))
        started, passes_done = time.perf_counter(), 0

        def on_pass(_step) -> None:
            nonlocal passes_done
            passes_done += 1
            index, within = divmod(passes_done, passes)
            images = done_before[index] + (within / passes * batches[index] if within else 0)
            rate = images / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=images, rate=f"{rate:.2f} images/s")

        run.run(todo, on_pass=on_pass)
