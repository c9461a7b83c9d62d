"""`par eval`: are the generated digits recognisable, and as varied as real ones, for every n?

The shipped classifier `parcli/assets/digits/classifier.safetensors` was written by::

    par eval --train-classifier

(1,500 steps, seed 0, on the digits minus 50 held-out per class; its held-out accuracy is stored
in the file and printed under every table).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from parcli.commands.common import (
    DeviceOption,
    DtypeOption,
    OfflineOption,
    QuietOption,
    console,
    err_console,
    fail,
    pass_progress,
    user_errors,
    warn_if_emulated,
)
from parcli.commands.models import load_pipelines, parse_region_list
from parcli.dtypes import compute_dtype
from parcli.engine.devices import resolve_device
from parcli.io.files import atomic_path, check_writable
from parcli.pipeline import PipelineError


def _command() -> str:
    return shlex.join(["par", *sys.argv[1:]])


def eval_digits(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Catalogue family (or entry) to evaluate.")
    ] = "digits",
    regions: Annotated[
        str, typer.Option(help="Region counts to evaluate, e.g. 1,4,16.")
    ] = "1,4,16",
    samples_per_class: Annotated[
        int, typer.Option(help="Digits generated per class and per n.")
    ] = 50,
    cfg_scale: Annotated[
        float | None,
        typer.Option(help="Classifier-free guidance scale; <= 1 turns it off. Default: model's."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every n.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images generated together.")] = 100,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure here.")
    ] = None,
    classifier: Annotated[
        Path | None,
        typer.Option(help="Digit classifier file. Default: the one shipped with parcli."),
    ] = None,
    train_classifier: Annotated[
        bool,
        typer.Option(
            "--train-classifier",
            help="Train the digit classifier afresh, write it to --classifier (default: the "
            "shipped file) and stop.",
        ),
    ] = False,
    classifier_steps: Annotated[
        int, typer.Option(help="Training steps with --train-classifier.")
    ] = 1500,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
) -> None:
    """Score generated digits per n: class accuracy and Fréchet distance of classifier features."""
    from parcli.data import DataError
    from parcli.evaluate import DEFAULT_CLASSIFIER

    classifier_path = classifier if classifier is not None else DEFAULT_CLASSIFIER
    with user_errors():
        try:
            if train_classifier:
                _train(classifier_path, classifier_steps, seed, quiet)
                return
            _evaluate(
                model,
                regions,
                samples_per_class,
                cfg_scale,
                seed,
                batch_size,
                device,
                dtype,
                json_path,
                classifier_path,
                offline,
                quiet,
            )
        except (DataError, ValueError) as exc:
            raise fail(str(exc)) from None


def _train(path: Path, steps: int, seed: int, quiet: bool) -> None:
    from parcli.data import load_digits
    from parcli.evaluate import save_classifier, train_classifier

    if steps < 1:
        raise PipelineError("--classifier-steps must be at least 1")
    check_writable(path, (".safetensors",))
    images, labels = load_digits()
    with pass_progress(quiet) as progress:
        task = progress.add_task("classifier", total=steps, status="")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, status=f"loss {loss:.4f}")

        net, info = train_classifier(images, labels, steps=steps, seed=seed, on_step=on_step)
    save_classifier(path, net, info, _command())
    console.print(
        f"held-out accuracy {100 * info.held_out_accuracy:.1f}% on {info.held_out_count} digits "
        f"· {info.steps} steps · {info.seconds:.0f} s -> {path}",
        highlight=False,
    )


def _evaluate(
    model: str,
    regions: str,
    samples_per_class: int,
    cfg_scale: float | None,
    seed: int,
    batch_size: int,
    device: str,
    dtype: str,
    json_path: Path | None,
    classifier_path: Path,
    offline: bool,
    quiet: bool,
) -> None:
    from parcli.evaluate import (
        evaluate,
        features,
        load_classifier,
        real_baseline,
        reference_images,
        report,
    )

    region_list = parse_region_list(regions)
    if samples_per_class < 1 or batch_size < 1:
        raise PipelineError("--samples-per-class and --batch-size must be at least 1")
    if cfg_scale is not None and cfg_scale < 0:
        raise PipelineError(f"--cfg-scale must be >= 0, not {cfg_scale}")
    if json_path is not None:
        check_writable(json_path, (".json",))
    net, info = load_classifier(classifier_path)
    torch_device = resolve_device(device)
    torch_dtype = compute_dtype(dtype, torch_device)
    warn_if_emulated(torch_device, torch_dtype)

    pipelines = load_pipelines(
        model, region_list, None, None, torch_device, torch_dtype, offline, console, quiet
    )

    train_images, _, held_images, held_labels = reference_images()
    reference = features(net, train_images)
    baseline = real_baseline(net, reference, held_images, held_labels, samples_per_class)

    started = time.perf_counter()
    with pass_progress(quiet) as progress:
        tasks = {
            n: progress.add_task(f"n={n} {pipelines[n].name}", total=None, status="")
            for n in region_list
        }

        def on_progress(n: int, done: int, total: int) -> None:
            progress.update(tasks[n], completed=done, total=total, status=f"pass {done}/{total}")

        results = evaluate(
            pipelines,
            net,
            samples_per_class,
            seed,
            cfg_scale,
            batch_size,
            reference_feats=reference,
            on_progress=on_progress,
        )
    seconds = time.perf_counter() - started

    scales = sorted(
        {p.default_cfg_scale if cfg_scale is None else cfg_scale for p in pipelines.values()}
    )
    title = f"{model} · {samples_per_class} samples per class · seed {seed}"
    table = Table(title=title, caption=_caption(info, baseline, scales, torch_device))
    for header in ("n", "passes", "accuracy", "Fréchet distance", "FD vs n=1", "seconds", "goals"):
        table.add_column(header, justify="right")
    for row in results:
        goal = f"≥{100 * row.accuracy_goal:.0f}%"
        if row.fd_goal is not None:
            goal += f", FD ≤{row.fd_goal:.1f}x"
        mark = "[green]met[/]" if row.passes_goals else "[red]missed[/]"
        table.add_row(
            str(row.regions),
            str(row.passes),
            f"{100 * row.accuracy:.1f}%",
            f"{row.frechet_distance:.3g}",
            f"{row.fd_vs_n1:.2f}x" if row.fd_vs_n1 is not None else "–",
            f"{row.seconds:.1f}",
            f"{mark} ({goal})",
        )
    console.print(table)
    if not all(row.passes_goals for row in results):
        err_console.print("some quality goals were missed", style="yellow")

    if json_path is not None:
        settings = {
            "command": _command(),
            "model": model,
            "regions": region_list,
            "samples_per_class": samples_per_class,
            "cfg_scale": cfg_scale,
            "default_cfg_scales": {str(n): p.default_cfg_scale for n, p in pipelines.items()},
            "seed": seed,
            "batch_size": batch_size,
            "device": str(torch_device),
            "dtype": str(torch_dtype).removeprefix("torch."),
            "classifier": str(classifier_path),
            "seconds": round(seconds, 2),
        }
        with atomic_path(json_path) as tmp:
            tmp.write_text(report(results, info, baseline, settings))
        console.print(f"wrote {json_path}", highlight=False)


def _caption(info, baseline, scales: list[float], device: torch.device) -> str:
    guidance = ", ".join(f"{s:g}" for s in scales)
    return (
        f"classifier: {100 * info.held_out_accuracy:.1f}% on {info.held_out_count} held-out digits"
        f" · real held-out digits ({baseline.samples}): accuracy {100 * baseline.accuracy:.1f}%,"
        f" FD {baseline.frechet_distance:.3g} · FD against the classifier's "
        f"{baseline.reference_count} training digits · cfg {guidance} · {device}"
    )
