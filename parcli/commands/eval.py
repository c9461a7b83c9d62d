"""`par eval`: are the generated digits recognisable, and as varied as real ones, for every n?
(How the shipped classifier was made: parcli/assets/digits/MODEL_CARD.md.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from parcli.commands.common import (
    BATCH_HELP,
    CatalogueOption,
    OfflineOption,
    QuietOption,
    command_line,
    console,
    err_console,
    old_spellings,
    parse_region_list,
    pass_progress,
    run_options,
    user_errors,
    waiting_status,
    warn_if_emulated,
)
from parcli.commands.downloads import model_fetcher
from parcli.errors import at_least_one
from parcli.io.files import check_writable, write_json
from parcli.options import RunOptions


@run_options()
@old_spellings(samples_per_class_alias=("--samples-per-class", "per_class"))
def eval_digits(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Catalogue family (or entry) to evaluate.")
    ] = "digits",
    regions: Annotated[
        str, typer.Option(help="Region counts to evaluate, e.g. 1,4,16.")
    ] = "1,4,16",
    per_class: Annotated[int, typer.Option(help="Digits generated per class and per n.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every n.")] = 0,
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = 100,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure here.")
    ] = None,
    classifier: Annotated[
        Path | None,
        typer.Option(
            show_default=False,
            help="Digit classifier file; the one shipped with parcli when not given.",
        ),
    ] = None,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
    catalogue: CatalogueOption = None,
    run: dict | None = None,
) -> None:
    """Score generated digits per n: class accuracy and Fréchet distance of classifier features.

    For a video family (digits-video): per-frame accuracy, clips of one class throughout, and
    motion against the training clips."""
    from parcli.io.locate import model_files
    from parcli.pipeline import open_pipeline
    from parcli.quality.digits import DEFAULT_CLASSIFIER, evaluate, load_classifier, report
    from parcli.quality.video import evaluate_video

    classifier_path = classifier if classifier is not None else DEFAULT_CLASSIFIER
    with user_errors({"samples_per_class": "--per-class"}):
        region_list = parse_region_list(regions)
        at_least_one(samples_per_class=per_class, batch_size=batch_size)
        if json_path is not None:
            check_writable(json_path, (".json",), setting="json")
        net, info = load_classifier(classifier_path)
        options = RunOptions.resolve(**run)
        warn_if_emulated(options.torch_device, options.torch_dtype)
        fetch = model_fetcher(offline, quiet)
        pipelines = {n: open_pipeline(model_files(model, n, fetch=fetch), options, n)
                     for n in region_list}  # fmt: skip
        scales = sorted({p.sampling().cfg_scale for p in pipelines.values()})

        started = time.perf_counter()
        with pass_progress(quiet) as progress:
            on_progress = region_bars(progress, pipelines)
            video = any(pipe.is_video for pipe in pipelines.values())
            scores = evaluate_video if video else evaluate
            results, baseline = scores(pipelines, net, per_class, seed, batch_size, on_progress)
        seconds = time.perf_counter() - started

        title = f"{model} · {per_class} samples per class · seed {seed}"
        caption = _caption(info, baseline, video) + f" · cfg {', '.join(f'{s:g}' for s in scales)}"
        print_results(title, results, f"{caption} · {options.torch_device}", video)
        if json_path is not None:
            settings = {
                "command": command_line(), "model": model,
                "regions": region_list, "samples_per_class": per_class, **options.to_dict(),
                "default_cfg_scales": {str(n): p.defaults.cfg_scale for n, p in pipelines.items()},
                "seed": seed, "batch_size": batch_size, "classifier": str(classifier_path),
                "seconds": round(seconds, 2),
            }  # fmt: skip
            name = "training_baseline" if video else "real_baseline"
            write_json(json_path, report(results, info, baseline, settings, name), "json")
            console.print(f"wrote {escape(str(json_path))}", highlight=False)


def region_bars(progress, pipelines: dict):
    """A bar per region count, and the callback `(n, done, total)` that advances them. Each
    pipeline compiles its own step, but the first to run times the int8 products for all."""
    tasks = {
        n: progress.add_task(
            escape(f"n={n} {pipe.name}"),
            total=None,
            status=waiting_status(pipe) if k == 0 or pipe.engine.compiled else "",
        )
        for k, (n, pipe) in enumerate(pipelines.items())
    }

    def on_progress(n: int, done: int, total: int) -> None:
        progress.update(tasks[n], completed=done, total=total, status=f"pass {done}/{total}")

    return on_progress


IMAGE_HEADERS = ("n", "passes", "accuracy", "Fréchet distance", "FD vs n=1")
VIDEO_HEADERS = ("n", "passes", "frame accuracy", "one class", "motion (px)", "vs training")


def print_results(title: str, results, caption: str, video: bool = False) -> None:
    """One right-aligned row per n with its goals, and a warning below when a goal was missed."""
    table = Table(title=escape(title), caption=caption)
    for header in (*(VIDEO_HEADERS if video else IMAGE_HEADERS), "seconds", "goals"):
        table.add_column(header, justify="right")
    for row in results:
        if video:
            goal = f"≥{100 * row.accuracy_goal:.0f}%, motion ±50%, {row.planned_passes} passes"
            cells = (
                f"{row.passes}",
                f"{100 * row.frame_accuracy:.1f}%",
                f"{100 * row.consistency:.1f}%",
                f"{row.motion:.2f}",
                f"{row.motion_vs_training:.2f}x",
            )
        else:
            goal = f"≥{100 * row.accuracy_goal:.0f}%"
            if row.fd_goal is not None:
                goal += f", FD ≤{row.fd_goal:.1f}x"
            cells = (
                f"{row.passes:g}",
                f"{100 * row.accuracy:.1f}%",
                f"{row.frechet_distance:.3g}",
                f"{row.fd_vs_n1:.2f}x" if row.fd_vs_n1 is not None else "–",
            )
        mark = "[green]met[/]" if row.passes_goals else "[red]missed[/]"
        table.add_row(str(row.regions), *cells, f"{row.seconds:.1f}", f"{mark} ({goal})")
    console.print(table)
    if not all(row.passes_goals for row in results):
        err_console.print("some quality goals were missed", style="yellow")


def _caption(info, baseline, video: bool) -> str:
    classifier = (
        f"classifier: {100 * info.held_out_accuracy:.1f}% on {info.held_out_count} held-out digits"
    )
    if video:
        return (
            f"{classifier} · training clips ({baseline.clips}): frame accuracy "
            f"{100 * baseline.frame_accuracy:.1f}%, one class {100 * baseline.consistency:.1f}%, "
            f"motion {baseline.motion:.2f} px"
        )
    return (
        f"{classifier} · real held-out digits ({baseline.samples}): accuracy "
        f"{100 * baseline.accuracy:.1f}%, FD {baseline.frechet_distance:.3g} · FD against the "
        f"classifier's {baseline.reference_count} training digits"
    )
