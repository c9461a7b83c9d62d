"""`par bench`: passes, latency, throughput, speed-up over sequential decoding, memory."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from parcli.bench import copy_rate, machine_info, random_pipelines, run_bench, weight_bytes
from parcli.commands.common import console, err_console, user_errors
from parcli.commands.models import load_pipelines, parse_grid, parse_ints, parse_region_list
from parcli.config import GPT_PRESETS
from parcli.media import atomic_path, check_writable
from parcli.pipeline import Pipeline, PipelineError, resolve_device, resolve_dtype
from parcli.sampling import SamplingConfig


def bytes_text(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def bench(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Catalogue family or entry to time.")
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help=f"Random weights of a published architecture: {', '.join(GPT_PRESETS)}."),
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A converted transformer.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="A converted VQ tokenizer.")] = None,
    regions: Annotated[str, typer.Option(help="Region counts to compare, e.g. 1,4,16.")] = "1,4,16",
    batch_size: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,8,32.")] = "1",
    grid: Annotated[str | None, typer.Option(help="Token grid for --arch, e.g. 24x24.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side for --arch (stride 16).")] = 384,
    cfg_scale: Annotated[
        float | None, typer.Option(help="Guidance scale (on by default); <= 1 turns it off.")
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    warmup: Annotated[int, typer.Option(help="Untimed rounds first (graph capture, compile).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed rounds; configurations interleave.")] = 3,
    compile_model: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile", help="torch.compile the step. Default: on CUDA only."
        ),
    ] = None,
    decode: Annotated[bool, typer.Option(help="Also time the VQ decoder.")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every figure here.")
    ] = None,
    offline: Annotated[bool, typer.Option(help="Never touch the network.")] = False,
) -> None:
    """Time generation at 1, 4 and 16 regions on the real `par generate` path."""
    with user_errors():
        region_list = parse_region_list(regions)
        batches = parse_ints(batch_size, "--batch-size")
        if warmup < 0 or repeats < 1:
            raise PipelineError("--warmup must be >= 0 and --repeats >= 1")
        if json_path is not None:
            check_writable(json_path, (".json",))
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        use_compile = torch_device.type == "cuda" if compile_model is None else compile_model

        random_weights = arch is not None
        if random_weights:
            if model is not None or checkpoint is not None:
                raise PipelineError("--arch times random weights; drop --model / --checkpoint")
            if arch not in GPT_PRESETS:
                raise PipelineError(
                    f"unknown --arch {arch!r}; choose one of {', '.join(GPT_PRESETS)}"
                )
            sides = parse_grid(grid, image_size)
            with console.status(f"building {arch} with random weights"):
                pipelines = random_pipelines(
                    arch, region_list, sides, torch_device, torch_dtype, seed
                )
            title = f"{arch} · random weights: speed only · grid {'x'.join(map(str, sides))}"
        else:
            pipelines = load_pipelines(
                model,
                region_list,
                checkpoint,
                tokenizer,
                torch_device,
                torch_dtype,
                offline,
                console,
            )
            title = " / ".join(p.name for p in pipelines.values())
        for pipe in pipelines.values():
            pipe.compile_model = use_compile
        first = next(iter(pipelines.values()))
        scale = cfg_scale if cfg_scale is not None else max(first.default_cfg_scale, 1.5)
        sampling = SamplingConfig(cfg_scale=scale)

        rate = copy_rate(torch_device)
        with console.status("timing") as status:
            rows = run_bench(
                pipelines,
                batches,
                sampling,
                warmup,
                repeats,
                decode,
                seed,
                rate,
                on_run=lambda text: status.update(f"timing · {text}"),
            )
        print_table(title, rows, torch_device, torch_dtype, sampling, rate, first)
        if json_path is not None:
            report = {
                "command": shlex.join(["par", *sys.argv[1:]]),
                "machine": machine_info(torch_device),
                "model": title,
                "random_weights": random_weights,
                "settings": {
                    "dtype": str(torch_dtype).removeprefix("torch."),
                    "cfg_scale": sampling.cfg_scale,
                    "guided": sampling.guided,
                    "warmup": warmup,
                    "repeats": repeats,
                    "compile": use_compile,
                    "decode": decode,
                    "grid": list(first.plan.grid),
                },
                "weight_bytes": weight_bytes(first),
                "copy_rate_bytes_per_s": rate,
                "rows": [row.to_dict() for row in rows],
            }
            with atomic_path(json_path) as tmp:
                tmp.write_text(json.dumps(report, indent=2) + "\n")
            console.print(f"wrote {json_path}", highlight=False)


def seconds_text(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def print_table(title, rows, device, dtype, sampling, rate, pipe: Pipeline) -> None:
    table = Table(title=title, caption=_caption(device, dtype, sampling, rate, pipe))
    headers = ["n", "batch", "passes", "gen s/img", "min–max", "decode s/img", "total s/img"]
    headers += ["img/s"]
    headers += ["vs n=1", "peak mem"] + (["floor"] if rate else [])
    for header in headers:
        table.add_column(header, justify="right")
    for row in rows:
        cells = [
            str(row.regions),
            str(row.batch),
            str(row.passes),
            seconds_text(row.gen_s_per_image) + (" ⚠" if row.noisy else ""),
            f"{seconds_text(row.gen_s_per_image_min)}–{seconds_text(row.gen_s_per_image_max)}",
            seconds_text(row.decode_s_per_image),
            seconds_text(row.total_s_per_image),
            f"{row.images_per_s:.3g}",
            f"{row.speedup_vs_1:.2f}x" if row.speedup_vs_1 is not None else "–",
            bytes_text(row.peak_memory_bytes),
        ]
        if rate:
            cells.append(f"{100 * row.floor_fraction:.0f}%")
        table.add_row(*cells)
    console.print(table)
    if any(row.noisy for row in rows):
        err_console.print(
            "⚠ timed repeats of these rows spread widely (see min–max): the machine is "
            "noisy; add --repeats or rerun on a quiet machine",
            style="yellow",
        )


def _caption(device, dtype, sampling, rate, pipe: Pipeline) -> str:
    parts = [
        str(device),
        str(dtype).removeprefix("torch."),
        f"cfg {sampling.cfg_scale}" if sampling.guided else "no guidance",
    ]
    if rate:
        parts.append(f"copy rate {rate / 1e12:.2f} TB/s; floor = weights x passes / copy rate")
    return " · ".join(parts)
