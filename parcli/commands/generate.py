"""`par generate`: class labels in, PNG images (or MP4 videos) out."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from parcli import __version__
from parcli.commands.common import (
    CatalogueOption,
    CfgScaleOption,
    CompileOption,
    DeviceOption,
    DtypeOption,
    OfflineOption,
    QuantizeOption,
    QuietOption,
    ReferenceKernelsOption,
    TemperatureOption,
    ThreadsOption,
    TopKOption,
    TopPOption,
    console,
    err_console,
    pass_counter,
    pass_progress,
    user_errors,
    waiting_status,
    warn_if_emulated,
)
from parcli.commands.downloads import model_fetcher
from parcli.engine.devices import resolve
from parcli.engine.dtypes import dtype_name
from parcli.engine.memory import check_files_fit
from parcli.engine.threads import use_threads
from parcli.errors import SettingError, Terminated, UserError
from parcli.io.animate import FPS as ANIMATION_FPS
from parcli.io.animate import animation_frames
from parcli.io.catalogue import use_catalogue
from parcli.io.classes import class_set_of_size, class_slug, resolve_classes
from parcli.io.files import atomic_write, check_writable, is_directory_target
from parcli.io.media import (
    CLIP_FPS,
    IMAGE_SUFFIXES,
    TOKEN_SUFFIXES,
    VIDEO_SUFFIXES,
    check_mp4_writer,
    check_output_kind,
    enlarge,
    image_names,
    save_samples,
    save_tokens,
    save_video,
)
from parcli.io.models import catalogue_class_set, model_files, pipeline_of
from parcli.io.recipe import (
    Recipe,
    Sample,
    checkpoint_sha256,
    earlier_outputs,
    read_recipe,
)

# Settings whose option is not simply --setting-name.
OPTIONS = {"from_file": "--from", "manifest": "--json", "num_samples": "-n/--num-samples"}


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
        int | None,
        typer.Option(help="Random seed (default 0); same seed, same device -> same images."),
    ] = None,
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
    compile_model: CompileOption = None,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
    catalogue: CatalogueOption = None,
    threads: ThreadsOption = None,
    quantize: QuantizeOption = None,
    reference_kernels: ReferenceKernelsOption = False,
) -> None:
    """Generate images (or clips) of the given classes with 1, 4 or 16 PAR regions."""
    with user_errors(OPTIONS):
        use_catalogue(catalogue)
        for setting, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if value < 1:
                raise SettingError(setting, f"must be at least 1, not {value}")
        if output is not None:
            check_writable(output, IMAGE_SUFFIXES + VIDEO_SUFFIXES, allow_directory=True)
        if animate is not None:
            check_writable(animate, VIDEO_SUFFIXES, setting="animate")
            check_mp4_writer(animate, setting="animate")
        if save_tokens_to is not None:
            check_writable(save_tokens_to, TOKEN_SUFFIXES, setting="save_tokens")
        if manifest is not None:
            check_writable(manifest, (".json",), setting="manifest")
        earlier = None
        if from_file is not None:
            earlier = read_recipe(from_file)
            asked = {
                "class": bool(classes), "model": model is not None and earlier.model is not None,
                "regions": regions is not None, "seed": seed is not None,
                "cfg_scale": cfg_scale is not None, "temperature": temperature is not None,
                "top_k": top_k is not None, "top_p": top_p is not None, "dtype": dtype != "auto",
                "num_samples": num_samples != 1, "scale": scale != 1,
                "quantize": quantize is not None, "reference_kernels": reference_kernels,
                "compile": compile_model is not None,
            }  # fmt: skip
            clash = next((name for name, given in asked.items() if given), None)
            if clash is not None:
                raise SettingError(clash, f"comes from {from_file} with --from; leave it out")
            if earlier.model is None and checkpoint is None:
                raise SettingError(
                    "from_file", f"{from_file} was made from the file {earlier.checkpoint}: give "
                    "it again with --checkpoint (and --tokenizer)",
                )  # fmt: skip
            model = earlier.model if checkpoint is None else model
            regions, seed, dtype = earlier.regions, earlier.seed, earlier.dtype
            cfg_scale, temperature = earlier.cfg_scale, earlier.temperature
            top_k, top_p, scale = earlier.top_k, earlier.top_p, earlier.scale
            quantize, reference_kernels = earlier.quantize, earlier.reference_kernels
        elif not classes:
            raise SettingError("class", "give at least one class (an id or a name), or --from")
        torch_device, torch_dtype = resolve(device, dtype)
        if earlier is not None and earlier.device == torch_device.type:
            # bf16 tokens depend on it; on another kind of device they differ anyway, and a
            # CUDA recipe would otherwise compile for minutes on a CPU.
            compile_model = earlier.compiled
        if not quiet:
            warn_if_emulated(torch_device, torch_dtype)
        if earlier is not None:
            samples = list(earlier.samples)
        else:
            # Names are looked up before any download, where the catalogue says the class set.
            names = None if checkpoint is not None else catalogue_class_set(model, regions)
            class_ids = resolve_classes(classes, names) if names is not None else None
        fetch = model_fetcher(offline, quiet)
        printer = status_printer(quiet)
        files = model_files(model, regions, checkpoint, tokenizer, fetch, printer, demo=True)
        count = len(samples) if earlier is not None else len(classes) * num_samples
        guided = (cfg_scale is None or cfg_scale > 1) if earlier is None else cfg_scale > 1
        check_files_fit(
            files.checkpoint, files.tokenizer, torch_device, torch_dtype, batch_size, count,
            guided, scale,
        )  # fmt: skip
        # With --from, the weights are checked against the recipe before the region count.
        pipe = pipeline_of(
            files, None if earlier else regions, torch_device, torch_dtype, compile_model,
            quantize, reference_kernels=reference_kernels,
        )  # fmt: skip
        use_threads(pipe.model, threads)
        weights_sha = checkpoint_sha256(files.checkpoint)
        if earlier is not None:
            check_same_weights(earlier, files.checkpoint, weights_sha, torch_device, quiet)
            pipe.check_regions(regions)
        else:
            if class_ids is None:
                names = class_set_of_size(pipe.model.cfg.num_classes)
                class_ids = resolve_classes(classes, names)
            labels = [c for c in class_ids for _ in range(num_samples)]
            samples = [
                Sample(label, names.label(label) if names else None, index)
                for index, label in enumerate(labels)
            ]
        if output is None:
            output = "generated.mp4" if pipe.is_video else "generated.png"
        check_output_kind(output, pipe.is_video, pipe.name)
        if pipe.is_video:
            check_mp4_writer(output, folder=is_directory_target(output))
        old_files = earlier_outputs(Path(output)) if is_directory_target(output) else []
        if old_files and not overwrite:
            shown = ", ".join(path.name for path in old_files[:2])
            raise SettingError(
                "output", f"{output} holds {len(old_files)} files of an earlier run ({shown}"
                f"{', ...' if len(old_files) > 2 else ''}); choose an empty folder, or --overwrite "
                "to replace them",
            )  # fmt: skip
        sampling = pipe.sampling(cfg_scale, temperature, top_k, top_p)
        labels = [sample.class_id for sample in samples]
        pipe.check_labels(labels)

        started = time.perf_counter()
        with pass_progress(quiet) as progress:
            batches = -(-len(labels) // batch_size)
            on_pass = pass_counter(
                progress, pipe.name, pipe.plan.num_passes, batches, waiting_status(pipe)
            )
            indices = [sample.index for sample in samples]
            tokens = pipe.generate(labels, sampling, seed or 0, batch_size, on_pass, indices)
            pixels = pipe.decode(tokens)  # on the host, so the device has finished
        seconds = time.perf_counter() - started

        if earlier is not None:
            per_row = earlier.columns
        else:  # several classes: one row each, so that the samples of a class line up
            per_row = num_samples if len(class_ids) > 1 else None
        recipe = Recipe(
            parcli=__version__,
            model=None if checkpoint is not None else files.name,
            checkpoint=files.checkpoint.name,
            checkpoint_sha256=weights_sha,
            tokenizer=files.tokenizer.name,
            regions=pipe.plan.regions,
            seed=seed or 0,
            cfg_scale=sampling.cfg_scale,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            dtype=dtype_name(torch_dtype),
            device=torch_device.type,
            scale=scale,
            columns=per_row,
            fps=(fps or CLIP_FPS) if pipe.is_video else None,
            quantize=quantize,
            samples=tuple(samples),
            reference_kernels=reference_kernels,
            compiled=pipe.engine.compiled,
        )

        def describe(numbers: list[int]) -> str:
            return recipe.for_samples([samples[i] for i in numbers]).to_json()

        if save_tokens_to is not None:
            save_tokens(save_tokens_to, tokens.cpu().numpy())
        pixels = enlarge(pixels, scale)
        stems = sample_stems(samples)
        for path in old_files:  # only with --overwrite; else the run was refused above
            path.unlink(missing_ok=True)
        with counted_on_interruption(output, stems, pipe.is_video):
            written = save_samples(
                output, pixels, stems, pipe.is_video, per_row, fps or CLIP_FPS, describe
            )
        if animate is not None:
            frames = animation_frames(pixels, pipe.plan, per_row)
            save_video(animate, frames, fps or ANIMATION_FPS)
        if manifest is not None:
            save_manifest(manifest, recipe, written, seconds, pipe.plan.num_passes)
        if not quiet:
            kind = "video" if pipe.is_video else "image"
            count = f"{len(labels)} {kind}" + ("s" if len(labels) != 1 else "")
            files_word = "file" if len(labels) == 1 else "files"
            where = (
                f"{len(labels)} {files_word} in {output}" if is_directory_target(output) else output
            )
            console.print(
                f"{count} · {pipe.plan.num_passes} passes each · {seconds:.2f} s · "
                f"{len(labels) / seconds:.2f} {kind}s/s -> {where}",
                highlight=False,
                markup=False,
            )
            if animate is not None:
                console.print(f"animation: {len(frames)} frames -> {animate}", markup=False)


@contextlib.contextmanager
def counted_on_interruption(output: str, stems: list[str], video: bool):
    """Ctrl-C or SIGTERM while a folder fills: say how many files are complete, then stop."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        if not is_directory_target(output):
            raise
        names = image_names(stems, len(stems), ".mp4" if video else ".png")
        done = sum((Path(output) / name).is_file() for name in names)
        word, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        err_console.print(
            f"{word}: {done} of {len(names)} files written to {output}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(code) from None


def check_same_weights(
    recipe: Recipe, checkpoint: Path, sha256: str, device: torch.device, quiet: bool
) -> None:
    """--from must load the weights the recipe names; another device kind may change tokens."""
    if sha256 != recipe.checkpoint_sha256:
        raise UserError(
            f"{checkpoint.name} is not the checkpoint the samples were made with (sha256 "
            f"{sha256[:12]}..., the recipe says {recipe.checkpoint_sha256[:12]}...)",
            "from_file",
        )
    if device.type != recipe.device and not quiet:
        err_console.print(
            f"note: made on {recipe.device}, now run on {device.type}: the tokens can differ",
            markup=False,
            highlight=False,
        )


def save_manifest(
    path: Path, recipe: Recipe, written: list[Path], seconds: float, passes: int
) -> None:
    """The whole run: its recipe, the files it wrote, its time."""
    document = {
        "recipe": recipe.to_dict(),
        "files": [str(p) for p in written],
        "passes_per_sample": passes,
        "seconds": round(seconds, 4),
    }
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sample_stems(samples: list[Sample]) -> list[str]:
    """File names of a run's samples: class id, class name, and the sample's number within its
    class over the whole run ("207-golden-retriever-s0000"), so repeated classes never collide."""
    seen: dict[int, int] = {}
    stems = []
    for sample in samples:
        label = sample.class_id
        number = seen[label] = seen.get(label, -1) + 1
        slug = class_slug(sample.class_name, label)
        stems.append("-".join([str(label), *([slug] if slug else []), f"s{number:04d}"]))
    return stems


def status_printer(quiet: bool):
    """Where slow steps before generation (converting a `.pt`) say what they do."""
    if quiet:
        return None
    return lambda text: err_console.print(
        f"{text} ...", style="dim", markup=False, highlight=False, soft_wrap=True
    )
