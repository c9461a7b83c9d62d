"""`par convert-weights`: published PyTorch pickles -> self-describing safetensors."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from parcli.commands.common import CatalogueOption, QuietOption, console, user_errors
from parcli.config import _INT_LIMITS, token_grid
from parcli.errors import SettingError
from parcli.io.catalogue import load_catalogue
from parcli.io.files import check_writable


def convert_weights(
    src: Annotated[Path, typer.Argument(help="Published checkpoint (.pt / .pth), read safely.")],
    dst: Annotated[Path, typer.Argument(help="Where to write the .safetensors file.")],
    ema: Annotated[bool, typer.Option("--ema", help="Take the EMA weights of the file.")] = False,
    heads: Annotated[
        int | None, typer.Option(help="Attention heads, when (layers, dim) match no preset.")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            show_default=False,
            help="Image side in pixels the model generates (tokenizer stride 16); when not given, "
            "384, the published checkpoints' (a checkpoint does not record it).",
        ),
    ] = None,
    grid: Annotated[
        str | None, typer.Option(help="Token grid instead of --image-size, e.g. 24 or 24x24.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Stored dtype: keep, fp32, bf16 or fp16.")] = "keep",
    quiet: QuietOption = False,
    catalogue: CatalogueOption = None,
) -> None:
    """Convert a LlamaGen / PAR transformer or the VQ tokenizer to safetensors."""
    from parcli.io.convert import convert  # torch: when the command runs, not for --help

    with user_errors({"dst": "DST", "src": "SRC"}):
        sides = token_grid(grid, 384 if image_size is None else image_size)
        assumed = grid is None and image_size is None
        # Before the source is read and hashed: a bad destination is one line, at once.
        check_writable(dst, (".safetensors",), setting="dst")
        limit = _INT_LIMITS["n_head"]  # a head count par's loader would refuse in the header
        if heads is not None and not 1 <= heads <= limit:
            raise SettingError("heads", f"must be between 1 and {limit}, not {heads}")
        converting = f"converting {escape(src.name)}"
        status = console.status(converting) if not quiet else contextlib.nullcontext()
        extra = {}  # its catalogue entry's guidance, so it samples the same by path or by name
        for entry in load_catalogue().entries("gpt"):
            if entry.file == src.name and not entry.is_packaged and entry.cfg_scale is not None:
                extra = {"catalogue_name": entry.name, "cfg_scale": str(entry.cfg_scale)}
                break
        with status:
            metadata = convert(
                src, dst, use_ema=ema, heads=heads, grid=sides, dtype=dtype, extra_metadata=extra
            )
        if not quiet:
            described = ", ".join(
                f"{key} {metadata[key]}"
                for key in ("kind", "arch", "regions", "grid", "num_classes", "vocab_size", "dtype")
                if key in metadata
            )
            console.print(f"wrote {escape(str(dst))} ({escape(described)})", highlight=False)
            if assumed and metadata.get("kind") == "gpt":
                console.print(
                    "grid 24x24 assumed (384 px, as published; a checkpoint does not record its "
                    "grid): give --grid or --image-size for another",
                    style="yellow",
                    markup=False,
                    highlight=False,
                )
            if "cfg_scale" in extra:
                console.print(
                    f"default guidance {extra['cfg_scale']} recorded from the catalogue entry "
                    f"{extra['catalogue_name']}",
                    markup=False,
                    highlight=False,
                )
