"""`par generate`: class labels in, PNG images (or MP4 videos) out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from parcli.commands.common import (
    CompileOption,
    DeviceOption,
    DtypeOption,
    OfflineOption,
    QuietOption,
    console,
    pass_progress,
    user_errors,
    warn_if_emulated,
)
from parcli.commands.models import locate_model
from parcli.dtypes import compute_dtype
from parcli.engine.devices import resolve_device
from parcli.io.files import check_writable, is_directory_target
from parcli.io.media import (
    IMAGE_SUFFIXES,
    TOKEN_SUFFIXES,
    VIDEO_SUFFIXES,
    save_images,
    save_tokens,
    save_video,
)
from parcli.pipeline import PipelineError, load_pipeline
from parcli.sampling import SamplingConfig


def generate(
    classes: Annotated[
        list[int], typer.Option("--class", "-c", help="Class label; repeat for several classes.")
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
    cfg_scale: Annotated[
        float | None,
        typer.Option(
            help="Classifier-free guidance scale; <= 1 turns guidance off. Default: model's."
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens; 0 = all.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1.0 = off.")] = 1.0,
    seed: Annotated[
        int, typer.Option(help="Random seed; same seed, same device -> same images.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Images decoded together.")] = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    output: Annotated[
        str,  # not Path: the trailing '/' of DIR/ matters
        typer.Option(
            "--output", "-o", help="x.png (one image, or a grid), DIR/ (one PNG each) or x.mp4."
        ),
    ] = "generated.png",
    save_tokens_to: Annotated[
        Path | None,
        typer.Option("--save-tokens", help="Also write token ids (images, rows, cols) to a .npy."),
    ] = None,
    scale: Annotated[
        int, typer.Option(min=1, max=16, help="Enlarge the written pixels N times (nearest).")
    ] = 1,
    compile_model: CompileOption = None,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
) -> None:
    """Generate images of the given classes with 1, 4 or 16 PAR regions."""
    with user_errors():
        if num_samples < 1 or batch_size < 1:
            raise PipelineError("--num-samples and --batch-size must be at least 1")
        directory = is_directory_target(output)
        check_writable(output, IMAGE_SUFFIXES + VIDEO_SUFFIXES, allow_directory=True)
        if save_tokens_to is not None:
            check_writable(save_tokens_to, TOKEN_SUFFIXES)
        files = locate_model(model, regions, checkpoint, tokenizer, offline, console, quiet)
        torch_device = resolve_device(device)
        torch_dtype = compute_dtype(dtype, torch_device)
        if not quiet:
            warn_if_emulated(torch_device, torch_dtype)
        pipe = load_pipeline(
            files.checkpoint,
            files.tokenizer,
            torch_device,
            torch_dtype,
            files.name,
            files.cfg_scale,
            compile_model,
        )
        pipe.check_regions(regions)
        if pipe.is_video != (Path(output).suffix in VIDEO_SUFFIXES) and not directory:
            kind = "video" if pipe.is_video else "image"
            raise PipelineError(
                f"{pipe.name} makes {kind}s; choose an output to match, not {output}"
            )
        try:
            sampling = SamplingConfig(
                cfg_scale=pipe.default_cfg_scale if cfg_scale is None else cfg_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
            )
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
        labels = [c for c in classes for _ in range(num_samples)]
        pipe.check_labels(labels)

        passes = pipe.plan.num_passes
        batches = -(-len(labels) // batch_size)
        started = time.perf_counter()
        with pass_progress(quiet) as progress:
            task = progress.add_task(pipe.name, total=passes * batches, status="")

            def advance(step) -> None:
                batch = progress.tasks[task].completed // passes + 1
                status = f"pass {step.index + 1}/{passes}"
                if batches > 1:
                    status += f" · batch {batch}/{batches}"
                progress.update(task, advance=1, status=status)

            tokens = pipe.generate(labels, sampling, seed, batch_size, advance)
            pixels = pipe.decode(tokens)
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        seconds = time.perf_counter() - started

        if save_tokens_to is not None:
            save_tokens(save_tokens_to, tokens.cpu().numpy())
        if scale > 1:
            pixels = pixels.repeat(scale, axis=-3).repeat(scale, axis=-2)
        names = [f"class{label}_s{i % num_samples}" for i, label in enumerate(labels)]
        if pipe.is_video and directory:
            Path(output).mkdir(exist_ok=True)
            for i, (name, video) in enumerate(zip(names, pixels, strict=True)):
                save_video(Path(output) / f"{i:04d}_{name}.mp4", video)
        elif pipe.is_video:
            save_video(output, pixels)
        else:
            save_images(output, pixels, names)
        if not quiet:
            where = output if not directory else f"{len(labels)} files in {output}"
            console.print(
                f"{len(labels)} {'videos' if pipe.is_video else 'images'} · {passes} passes each · "
                f"{seconds:.2f} s · {len(labels) / seconds:.2f} images/s -> {where}",
                highlight=False,
            )
