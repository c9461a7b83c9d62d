"""`par eval`: are the generated digits recognisable, and as varied as real ones, for every n?

The shipped classifier `parcli/assets/digits/classifier.safetensors` was written by::

    par train classifier -o classifier.safetensors

(1,500 steps, seed 0, on the digits minus 50 held-out per class; its held-out accuracy is stored
in the file and printed under every table), then copied into `parcli/assets/digits/` by hand:
`par` itself never writes inside the package.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from parcli.commands.common import (
    BATCH_HELP,
    CatalogueOption,
    OfflineOption,
    QuietOption,
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
from parcli.io.catalogue import use_catalogue
from parcli.io.files import atomic_path, check_writable
from parcli.options import RunOptions

if TYPE_CHECKING:
    import torch


def _command() -> str:
    return shlex.join(["par", *sys.argv[1:]])


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
    from parcli.pipeline import open_pipelines
    from parcli.quality.digits import (
        DEFAULT_CLASSIFIER,
        check_settings,
        evaluate_against_real,
        load_classifier,
        report,
    )
    from parcli.quality.video import evaluate_video, video_report

    classifier_path = classifier if classifier is not None else DEFAULT_CLASSIFIER
    with user_errors({"samples_per_class": "--per-class"}):
        use_catalogue(catalogue)
        region_list = parse_region_list(regions)
        cfg_scale = run["cfg_scale"]
        check_settings(per_class, batch_size, cfg_scale)
        if json_path is not None:
            check_writable(json_path, (".json",), setting="json")
        net, info = load_classifier(classifier_path)
        options = RunOptions.resolve(**run)
        torch_device = options.torch_device
        warn_if_emulated(torch_device, options.torch_dtype)
        pipelines = open_pipelines(model, region_list, options, model_fetcher(offline, quiet))

        started = time.perf_counter()
        with pass_progress(quiet) as progress:
            on_progress = region_bars(progress, pipelines)
            video = any(pipe.is_video for pipe in pipelines.values())
            evaluate = evaluate_video if video else evaluate_against_real
            results, baseline = evaluate(
                pipelines, net, per_class, seed, cfg_scale, batch_size, on_progress
            )
        seconds = time.perf_counter() - started

        scales = sorted({p.sampling(cfg_scale).cfg_scale for p in pipelines.values()})
        title = f"{model} · {per_class} samples per class · seed {seed}"
        if video:
            print_video_results(
                title, results, _video_caption(info, baseline, scales, torch_device)
            )
        else:
            print_results(title, results, _caption(info, baseline, scales, torch_device))
        if json_path is not None:
            settings = {
                "command": _command(), "model": model, "regions": region_list,
                "samples_per_class": per_class, **options.to_dict(),
                "default_cfg_scales": {str(n): p.default_cfg_scale for n, p in pipelines.items()},
                "seed": seed, "batch_size": batch_size, "classifier": str(classifier_path),
                "seconds": round(seconds, 2),
            }  # fmt: skip
            write = video_report if video else report
            with atomic_path(json_path, "json") as tmp:
                tmp.write_text(write(results, info, baseline, settings))
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


def print_results(title: str, results, caption: str) -> None:
    """One row per n: accuracy, distance, time and whether the goals are met."""
    rows = []
    for row in results:
        goal = f"≥{100 * row.accuracy_goal:.0f}%"
        if row.fd_goal is not None:
            goal += f", FD ≤{row.fd_goal:.1f}x"
        cells = (
            str(row.regions),
            f"{row.passes:g}",
            f"{100 * row.accuracy:.1f}%",
            f"{row.frechet_distance:.3g}",
            f"{row.fd_vs_n1:.2f}x" if row.fd_vs_n1 is not None else "–",
            f"{row.seconds:.1f}",
        )
        rows.append((cells, goal, row.passes_goals))
    headers = ("n", "passes", "accuracy", "Fréchet distance", "FD vs n=1", "seconds")
    _print_goal_table(title, caption, headers, rows)


def _print_goal_table(
    title: str, caption: str, headers: tuple[str, ...], rows: list[tuple[tuple, str, bool]]
) -> None:
    """A right-aligned table of (cells, goal, met) rows with a goals column, and a warning
    below it when a goal was missed."""
    table = Table(title=escape(title), caption=caption)
    for header in (*headers, "goals"):
        table.add_column(header, justify="right")
    for cells, goal, met in rows:
        mark = "[green]met[/]" if met else "[red]missed[/]"
        table.add_row(*cells, f"{mark} ({goal})")
    console.print(table)
    if not all(met for _, _, met in rows):
        err_console.print("some quality goals were missed", style="yellow")


def _caption(info, baseline, scales: list[float], device: torch.device) -> str:
    guidance = ", ".join(f"{s:g}" for s in scales)
    return (
        f"classifier: {100 * info.held_out_accuracy:.1f}% on {info.held_out_count} held-out digits"
        f" · real held-out digits ({baseline.samples}): accuracy {100 * baseline.accuracy:.1f}%,"
        f" FD {baseline.frechet_distance:.3g} · FD against the classifier's "
        f"{baseline.reference_count} training digits · cfg {guidance} · {device}"
    )


def print_video_results(title: str, results, caption: str) -> None:
    """One row per n: per-frame accuracy, consistency, motion, passes and the goals."""
    rows = []
    for row in results:
        goal = f"≥{100 * row.accuracy_goal:.0f}%, motion ±50%, {row.planned_passes} passes"
        cells = (
            str(row.regions),
            str(row.passes),
            f"{100 * row.frame_accuracy:.1f}%",
            f"{100 * row.consistency:.1f}%",
            f"{row.motion:.2f}",
            f"{row.motion_vs_training:.2f}x",
            f"{row.seconds:.1f}",
        )
        rows.append((cells, goal, row.passes_goals))
    headers = ("n", "passes", "frame accuracy", "one class", "motion (px)", "vs training")
    _print_goal_table(title, caption, (*headers, "seconds"), rows)


def _video_caption(info, baseline, scales: list[float], device: torch.device) -> str:
    guidance = ", ".join(f"{s:g}" for s in scales)
    return (
        f"classifier: {100 * info.held_out_accuracy:.1f}% on {info.held_out_count} held-out digits"
        f" · training clips ({baseline.clips}): frame accuracy "
        f"{100 * baseline.frame_accuracy:.1f}%, one class {100 * baseline.consistency:.1f}%, "
        f"motion {baseline.motion:.2f} px · cfg {guidance} · {device}"
    )
