"""`par bench`: passes, latency, throughput, speed-up over sequential decoding, memory."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from parcli.commands.common import (
    BATCH_HELP,
    CatalogueOption,
    OfflineOption,
    command_line,
    console,
    err_console,
    parse_ints,
    parse_region_list,
    run_options,
    user_errors,
    warn_if_emulated,
)
from parcli.commands.downloads import model_fetcher
from parcli.config import GPT_PRESETS, token_grid
from parcli.io.files import check_writable, write_json
from parcli.options import RunOptions
from parcli.quality import INT8, OURS, PLAIN

DTYPES_HELP = (
    "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16; a list (fp32,bf16) times the same "
    "weights in each, interleaved, against the first."
)
STRATEGIES_HELP = (
    "par, sjd, or a list (par,sjd) timed on the same weights, interleaved, against the first."
)
BASELINE_HELP = (
    "Also time a plain engine (no packed weights, whole-cache masked attention with the "
    "reference's kernels, no graphs or compile) on the same weights, interleaved with ours."
)


@run_options(
    dtype=(Annotated[str, typer.Option(help=DTYPES_HELP)], "auto"),
    strategy=(Annotated[str, typer.Option(help=STRATEGIES_HELP)], "par"),
)
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
    batch_size: Annotated[
        str, typer.Option(help=f"{BATCH_HELP[:-1]}; a list (1,8,32) times each.")
    ] = "1",
    grid: Annotated[str | None, typer.Option(help="Token grid for --arch, e.g. 24x24.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side for --arch (stride 16).")] = 384,
    warmup: Annotated[
        int, typer.Option(help="Untimed runs of each case before its first timed one (capture).")
    ] = 1,
    repeats: Annotated[int, typer.Option(help="Timed rounds; configurations interleave.")] = 3,
    decode: Annotated[bool, typer.Option(help="Also time the VQ decoder.")] = True,
    baseline: Annotated[bool, typer.Option(help=BASELINE_HELP)] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random weights and of the draws.")] = 0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print a line per timed run as it ends.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every figure here.")
    ] = None,
    offline: OfflineOption = False,
    catalogue: CatalogueOption = None,
    run: dict | None = None,
) -> None:
    """Time generation at 1, 4 and 16 regions on the real `par generate` path."""
    from parcli.quality import bench as timing

    with user_errors():
        region_list = parse_region_list(regions)
        batches = tuple(parse_ints(batch_size, "batch_size"))
        most = max(batches)  # the pipelines are refused where it cannot fit
        if json_path is not None:
            check_writable(json_path, (".json",), setting="json")
        variants = bench_variants(run)
        for each in variants.values():
            warn_if_emulated(each.torch_device, each.torch_dtype)
        sides = token_grid(grid, image_size)
        building = console.status(f"building {escape(arch)} with random weights") if arch else None
        with building or nullcontext():
            timed = {
                label: timing.pipelines_to_time(model, arch, region_list, each, checkpoint,
                    tokenizer, sides, seed, model_fetcher(offline, quiet=label != OURS), most)
                for label, each in variants.items()
            }  # fmt: skip
        title = timed[OURS][1]
        engines = {label: pipes for label, (pipes, _) in timed.items()}
        ours = engines[OURS]
        if baseline:  # the plain engine's rows come right after ours
            plain = {n: p.plain_engine_twin() for n, p in ours.items()}
            engines = {OURS: ours, PLAIN: plain, **engines}
        first = next(iter(ours.values()))
        scale = variants[OURS].cfg_scale  # guidance on unless asked otherwise: at least 1.5
        sampling = first.sampling(max(first.defaults.cfg_scale, 1.5) if scale is None else scale)
        settings = timing.BenchSettings(batches, sampling, warmup, repeats, decode, seed)
        planned = len(ours) * len(batches) * len(engines)

        def save(rows: list[timing.Row]) -> None:
            document = timing.report(
                rows, engines, settings, title, arch is not None, command_line(), planned
            )
            write_json(json_path, document, "json")

        with console.status("timing") as status:

            def on_run(text: str) -> None:
                status.update(f"timing · {escape(text)}")
                if verbose:
                    err_console.print(f"timing · {text}", markup=False, highlight=False)

            # The JSON is rewritten as each case is measured: a run stopped early leaves those.
            rows = timing.run_bench(engines, settings, on_run, save if json_path else None)
        timing.print_report(
            console, err_console, title, rows, engines, sampling, decode, not warmup
        )
        if json_path is not None:
            save(rows)
            console.print(f"wrote {escape(str(json_path))}", highlight=False)


def bench_variants(run: dict) -> dict[str, RunOptions]:
    """The options timed, by row label: ours (the first dtype and strategy), then the same
    weights in each further dtype, in int8 (--quantize) and with each further strategy."""
    dtypes = [part.strip() for part in run["dtype"].split(",") if part.strip()] or ["auto"]
    strategies = [part.strip() for part in run["strategy"].split(",") if part.strip()] or ["par"]

    def options(dtype=dtypes[0], strategy=strategies[0], quantize=None) -> RunOptions:
        # --window is for the strategies that take one; par walks one pass at a time.
        window = None if strategy == "par" else run["window"]
        changed = {"dtype": dtype, "strategy": strategy, "quantize": quantize, "window": window}
        return RunOptions.resolve(**{**run, **changed})

    variants = {OURS: options()}
    for dtype in dtypes[1:]:
        each = options(dtype=dtype)
        if each.dtype != variants[OURS].dtype:
            variants[each.dtype] = each
    if run["quantize"] is not None:
        variants[INT8] = options(quantize=run["quantize"])
    for strategy in strategies[1:]:
        variants[strategy] = options(strategy=strategy)
    return variants
