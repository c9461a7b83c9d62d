"""`par fid`: FID between two `.npz` files of images (or a reference's stored statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from parcli.commands.common import (
    DeviceOption,
    OfflineOption,
    QuietOption,
    console,
    end_counter,
    show_counter,
    user_errors,
)
from parcli.errors import at_least_one
from parcli.io.files import check_writable, write_json


def fid_command(
    samples: Annotated[Path, typer.Argument(help="Images: an .npz with arr_0 (N, H, W, 3).")],
    reference: Annotated[
        Path, typer.Argument(help="Images too, or an .npz with mu and sigma (ADM's batches).")
    ],
    batch_size: Annotated[int, typer.Option(help="Images through the network together.")] = 50,
    device: DeviceOption = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write it here.")] = None,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
) -> None:
    """FID with torch-fidelity's TensorFlow-compatible Inception-v3
    (pip install 'parcli\\[fid]')."""
    from parcli.engine.devices import resolve_device
    from parcli.quality.fid import fid, inception

    with user_errors():
        at_least_one(batch_size=batch_size)
        if json_path is not None:
            check_writable(json_path, (".json",), setting="json")
        extractor = inception(resolve_device(device), offline)

        def on_batch(done: int, _: int) -> None:
            show_counter(f"{done} images through Inception-v3")

        result = fid(samples, reference, extractor, batch_size, None if quiet else on_batch)
        end_counter()
        console.print(f"FID {format_fid(result['fid'])}", highlight=False)
        if json_path is not None:
            write_json(json_path, result, "json")
            if not quiet:
                console.print(f"wrote {escape(str(json_path))}", highlight=False)


def format_fid(value: float) -> str:
    """Four decimals as FIDs are quoted; scientific notation where that would be a long row."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4e}"
