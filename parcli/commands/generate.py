"""`par generate`: class labels in, PNG images (or MP4 videos) out."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from parcli.commands.common import (
    BATCH_HELP,
    RUN_DEFAULTS,
    CatalogueOption,
    OfflineOption,
    QuietOption,
    console,
    err_console,
    old_spellings,
    pass_counter,
    pass_progress,
    run_options,
    user_errors,
    warn_if_emulated,
)
from parcli.commands.downloads import model_fetcher
from parcli.config import ANIMATION_FPS, CLIP_FPS
from parcli.errors import SettingError, at_least_one
from parcli.io.classes import class_set_of_size, resolve_classes
from parcli.io.locate import catalogue_class_set, model_files
from parcli.io.recipe import Recipe, Sample, check_replay, checkpoint_sha256, replay
from parcli.options import RunOptions

if TYPE_CHECKING:  # numpy and torch load when a command runs, not for --help
    from parcli.pipeline import Pipeline

# Settings whose option is not simply --setting-name.
OPTIONS = {"from_file": "--from", "manifest": "--json", "num_samples": "-n/--per-class"}


@run_options()
@old_spellings(num_samples_alias=("--num-samples", "num_samples"))
def generate(
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class",
            "-c",
            help='Class id or name (207, "golden retriever"; see `par classes`); repeat for '
            "several classes.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Catalogue entry or family (see `par weights list`)."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A converted .safetensors transformer, instead of --model.")
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="A converted .safetensors VQ tokenizer.")
    ] = None,
    regions: Annotated[
        int | None, typer.Option(help="PAR regions: 1 (sequential), 4 or 16.")
    ] = None,
    num_samples: Annotated[int, typer.Option("--per-class", "-n", help="Samples per class.")] = 1,
    seed: Annotated[
        int | None,
        typer.Option(help="Random seed, 0 when not given; same seed, same device -> same images."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = 16,
    output: Annotated[
        str | None,  # not Path: the trailing '/' of DIR/ matters
        typer.Option(
            "--output",
            "-o",
            help="x.png, .jpg or .webp (one image, or a grid) or DIR/ (one file each); x.mp4 "
            "or x.gif for video models, the clips in a grid; generated.png (.mp4) when not "
            "given.",
        ),
    ] = None,
    animate: Annotated[
        Path | None,
        typer.Option(
            help="Also write x.gif or x.mp4: the picture after each pass, cells still to come "
            "in gray (at most 120 frames; tokens unchanged)."
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            max=120,
            help=f"Frames per second of videos and of --animate; {CLIP_FPS:g} and "
            f"{ANIMATION_FPS:g} when not given.",
        ),
    ] = None,
    save_tokens_to: Annotated[
        Path | None,
        typer.Option(
            "--save-tokens",
            help="Also write token ids (images, rows, cols) or (clips, frames, rows, cols) "
            "to a .npy.",
        ),
    ] = None,
    scale: Annotated[
        int, typer.Option(min=1, max=16, help="Enlarge the written pixels N times (nearest).")
    ] = 1,
    manifest: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the run's recipe and files to this .json."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="With -o DIR/: first delete the files an earlier par run wrote there (only "
            "those), instead of refusing to mix two runs."
        ),
    ] = False,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Make the samples of a file written by par generate again (its PNG chunk or "
            ".json; see `par info`).",
        ),
    ] = None,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
    catalogue: CatalogueOption = None,
    run: dict | None = None,
) -> None:
    """Generate images (or clips) of the given classes with 1, 4 or 16 PAR regions."""
    from parcli.io.outputs import Outputs
    from parcli.pipeline import open_pipeline

    with user_errors(OPTIONS):
        at_least_one(num_samples=num_samples, batch_size=batch_size)
        outputs = Outputs(output, animate, save_tokens_to, manifest, overwrite, scale, fps)
        earlier = None
        if from_file is not None:
            asked = {"class": bool(classes), "model": model is not None, "seed": seed is not None,
                     "regions": regions is not None, "num_samples": num_samples != 1,
                     "scale": scale != 1}  # fmt: skip
            earlier, run = replay(from_file, run, RUN_DEFAULTS, asked, checkpoint is not None)
            model = earlier.model if checkpoint is None else model
            regions, seed, scale = earlier.regions, earlier.seed, earlier.scale
            outputs = replace(outputs, scale=scale)
        elif not classes:
            raise SettingError("class", "give at least one class (an id or a name), or --from")
        options = RunOptions.resolve(**run)
        if not quiet:
            warn_if_emulated(options.torch_device, options.torch_dtype)
        # Names are looked up before any download, where the catalogue says the class set.
        names = None if checkpoint is not None or earlier else catalogue_class_set(model, regions)
        files = model_files(
            model, regions, checkpoint, tokenizer, model_fetcher(offline, quiet),
            status_printer(quiet), demo=True,
        )  # fmt: skip
        count = len(earlier.samples) if earlier else len(classes) * num_samples
        # With --from, the weights are checked against the recipe before the region count.
        pipe = open_pipeline(files, options, None if earlier else regions, batch_size, count, scale)
        weights_sha = checkpoint_sha256(files.checkpoint)
        if earlier is not None:
            note = check_replay(earlier, files.checkpoint, weights_sha, options.device_kind)
            if note and not quiet:
                err_console.print(note, markup=False, highlight=False)
            pipe.check_regions(regions)
            samples, per_row = list(earlier.samples), earlier.columns
        else:
            samples, per_row = run_samples(classes, num_samples, names, pipe.model.cfg.num_classes)
        sampling = pipe.sampling()
        pipe.check_labels([sample.class_id for sample in samples])
        recipe = Recipe.of_run(
            pipe.run_options(sampling), samples, model=None if checkpoint else files.name,
            checkpoint=files.checkpoint.name, checkpoint_sha256=weights_sha,
            tokenizer=files.tokenizer.name, regions=pipe.plan.regions, seed=seed or 0,
            scale=scale, columns=per_row, fps=(fps or CLIP_FPS) if pipe.is_video else None,
        )  # fmt: skip
        todo = outputs.prepare(recipe, pipe.is_video, pipe.name, pipe.sample_bytes)
        started = time.perf_counter()
        tokens, pixels = make(pipe, samples, todo, sampling, seed or 0, batch_size, outputs, recipe,
                              quiet)  # fmt: skip
        seconds = time.perf_counter() - started
        frames = outputs.finish(recipe, tokens, pixels, pipe.plan, seconds)
        if not quiet:
            print_summary(pipe, len(todo), len(samples), seconds, outputs, frames)


def run_samples(
    classes: list[str], per_class: int, names, num_classes: int
) -> tuple[list[Sample], int | None]:
    """The samples a run makes, numbered in order, and the columns of a file of them all."""
    names = names or class_set_of_size(num_classes)
    class_ids = resolve_classes(classes, names)
    labels = enumerate(c for c in class_ids for _ in range(per_class))
    samples = [Sample(label, names.label(label) if names else None, n) for n, label in labels]
    return samples, per_class if len(class_ids) > 1 else None


def make(pipe: Pipeline, samples, todo, sampling, seed, batch_size, outputs, recipe, quiet):
    """Generate samples `todo`: their tokens and pixels, or None where a folder took them."""
    from parcli.io.outputs import counted_on_interruption, sample_stems

    target, stems = outputs.target(pipe.is_video), sample_stems(samples)
    labels = [samples[n].class_id for n in todo]
    if not labels:  # a folder this very run has filled already
        return None, None
    write = None
    if outputs.folder and outputs.animate is None and outputs.tokens is None:

        def write(first: int, tokens) -> None:
            numbers = todo[first : first + tokens.shape[0]]
            outputs.write_batch(recipe, stems, numbers, pipe.decode(tokens))

    with counted_on_interruption(target, stems, pipe.is_video), pass_progress(quiet) as progress:
        on_pass = pass_counter(progress, pipe, -(-len(labels) // batch_size))
        indices = [samples[n].index for n in todo]
        tokens = pipe.generate(labels, sampling, seed, batch_size, on_pass, indices, write)
        if write is not None:
            return None, None
        pixels = pipe.decode(tokens)  # on the host, so the device has finished
        if outputs.folder:
            outputs.write_batch(recipe, stems, todo, pixels)
        return tokens.cpu().numpy(), pixels


def print_summary(pipe: Pipeline, count: int, total: int, seconds: float, outputs, frames: int):
    kind, target = "video" if pipe.is_video else "image", outputs.target(pipe.is_video)
    where = f"{total} file{'s' if total != 1 else ''} in {target}" if outputs.folder else target
    if count < total:
        where += f" ({total - count} there already)"
    if not count:
        console.print(f"nothing to make: {where}", highlight=False, markup=False)
        return
    made = f"{count} {kind}{'s' if count != 1 else ''} · {pipe.passes_per_image():.4g} passes each"
    speed = f"{seconds:.2f} s · {count / seconds:.2f} {kind}s/s"
    console.print(f"{made} · {speed} -> {where}", highlight=False, markup=False)
    if frames:
        console.print(f"animation: {frames} frames -> {outputs.animate}", markup=False)


def status_printer(quiet: bool):
    """Where slow steps before generation (converting a `.pt`) say what they do."""
    if quiet:
        return None
    return lambda text: err_console.print(
        f"{text} ...", style="dim", markup=False, highlight=False, soft_wrap=True
    )
