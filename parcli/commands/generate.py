"""`par generate`: class labels in, PNG images (or MP4 videos) out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from parcli.animate import FPS as ANIMATION_FPS
from parcli.animate import animation_frames
from parcli.classes import ClassSet, class_set_of_size, resolve_classes
from parcli.commands.common import (
    CfgScaleOption,
    CompileOption,
    DeviceOption,
    DtypeOption,
    OfflineOption,
    QuietOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
    console,
    pass_counter,
    pass_progress,
    user_errors,
    warn_if_emulated,
)
from parcli.commands.downloads import model_fetcher
from parcli.engine.devices import resolve
from parcli.errors import SettingError
from parcli.io.files import check_writable, is_directory_target
from parcli.io.media import (
    CLIP_FPS,
    IMAGE_SUFFIXES,
    TOKEN_SUFFIXES,
    VIDEO_SUFFIXES,
    check_output_kind,
    enlarge,
    save_samples,
    save_tokens,
    save_video,
)
from parcli.load import catalogue_class_set, open_pipeline


def generate(
    classes: Annotated[
        list[str],
        typer.Option(
            "--class",
            "-c",
            help='Class id or name (207, "golden retriever"; see `par classes`); repeat for '
            "several classes.",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Catalogue entry or family (see `par weights list`)."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A converted .safetensors transformer, instead of --model."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="A converted .safetensors VQ tokenizer.")
    ] = None,
    regions: Annotated[
        int | None, typer.Option(help="PAR regions: 1 (sequential), 4 or 16.")
    ] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Samples per class.")] = 1,
    cfg_scale: CfgScaleOption = None,
    temperature: TemperatureOption = None,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    seed: Annotated[
        int, typer.Option(help="Random seed; same seed, same device -> same images.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Images decoded together.")] = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    output: Annotated[
        str | None,  # not Path: the trailing '/' of DIR/ matters
        typer.Option(
            "--output",
            "-o",
            help="x.png, .jpg or .webp (one image, or a grid) or DIR/ (one file each); x.mp4 "
            "or x.gif for video models, the clips side by side. Default generated.png / .mp4.",
        ),
    ] = None,
    animate: Annotated[
        Path | None,
        typer.Option(
            help="Also write x.gif or x.mp4: the picture after each pass, cells still to come "
            "in gray (at most 120 frames; tokens unchanged).",
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            max=120,
            help=f"Frames per second of videos (default {CLIP_FPS:g}) and of --animate "
            f"(default {ANIMATION_FPS:g}).",
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
    compile_model: CompileOption = None,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
) -> None:
    """Generate images (or clips) of the given classes with 1, 4 or 16 PAR regions."""
    with user_errors():
        for setting, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if value < 1:
                raise SettingError(setting, f"must be at least 1, not {value}")
        if output is not None:
            check_writable(output, IMAGE_SUFFIXES + VIDEO_SUFFIXES, allow_directory=True)
        if animate is not None:
            check_writable(animate, VIDEO_SUFFIXES, setting="animate")
        if save_tokens_to is not None:
            check_writable(save_tokens_to, TOKEN_SUFFIXES, setting="save_tokens")
        torch_device, torch_dtype = resolve(device, dtype)
        if not quiet:
            warn_if_emulated(torch_device, torch_dtype)
        # Names are looked up before any download, where the catalogue says the class set.
        names = None if checkpoint is not None else catalogue_class_set(model, regions)
        class_ids = resolve_classes(classes, names) if names is not None else None
        fetch = model_fetcher(offline, quiet)
        pipe = open_pipeline(
            model, regions, torch_device, torch_dtype, checkpoint, tokenizer, compile_model, fetch
        )
        if class_ids is None:
            names = class_set_of_size(pipe.model.cfg.num_classes)
            class_ids = resolve_classes(classes, names)
        if output is None:
            output = "generated.mp4" if pipe.is_video else "generated.png"
        check_output_kind(output, pipe.is_video, pipe.name)
        sampling = pipe.sampling(cfg_scale, temperature, top_k, top_p)
        labels = [c for c in class_ids for _ in range(num_samples)]
        pipe.check_labels(labels)

        started = time.perf_counter()
        with pass_progress(quiet) as progress:
            batches = -(-len(labels) // batch_size)
            on_pass = pass_counter(progress, pipe.name, pipe.plan.num_passes, batches)
            tokens = pipe.generate(labels, sampling, seed, batch_size, on_pass)
            pixels = pipe.decode(tokens)  # on the host, so the device has finished
        seconds = time.perf_counter() - started

        if save_tokens_to is not None:
            save_tokens(save_tokens_to, tokens.cpu().numpy())
        # Several classes: one row each, so that the samples of a class line up.
        per_row = num_samples if len(class_ids) > 1 else None
        pixels = enlarge(pixels, scale)
        stems = sample_stems(labels, names)
        save_samples(output, pixels, stems, pipe.is_video, per_row, fps or CLIP_FPS)
        if animate is not None:
            frames = animation_frames(pixels, pipe.plan, per_row)
            save_video(animate, frames, fps or ANIMATION_FPS)
        if not quiet:
            kind = "video" if pipe.is_video else "image"
            count = f"{len(labels)} {kind}" + ("s" if len(labels) != 1 else "")
            where = f"{len(labels)} files in {output}" if is_directory_target(output) else output
            console.print(
                f"{count} · {pipe.plan.num_passes} passes each · {seconds:.2f} s · "
                f"{len(labels) / seconds:.2f} {kind}s/s -> {where}",
                highlight=False,
                markup=False,
            )
            if animate is not None:
                console.print(f"animation: {len(frames)} frames -> {animate}", markup=False)


def sample_stems(labels: list[int], names: ClassSet | None) -> list[str]:
    """File names of a run's samples: class id, class name, and the sample's number within its
    class over the whole run ("207-golden-retriever-s0000"), so repeated classes never collide."""
    seen: dict[int, int] = {}
    stems = []
    for label in labels:
        number = seen[label] = seen.get(label, -1) + 1
        slug = names.slug(label) if names is not None else ""
        stems.append("-".join([str(label), *([slug] if slug else []), f"s{number:04d}"]))
    return stems
