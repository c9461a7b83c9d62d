"""`par bench`: passes, latency, throughput, speed-up over sequential decoding, memory."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from parcli.commands.common import (
    BATCH_HELP,
    CatalogueOption,
    OfflineOption,
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
from parcli.io.catalogue import use_catalogue
from parcli.io.files import atomic_path, check_writable
from parcli.options import RunOptions
from parcli.quality import INT8, OURS, PLAIN

if TYPE_CHECKING:  # torch loads when the command runs, not for --help
    from parcli.pipeline import Pipeline
    from parcli.quality.bench import Row
    from parcli.sampling import SamplingConfig


def bytes_text(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1024
    return str(count)


BENCH_DTYPES = (
    Annotated[
        str,
        typer.Option(
            help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16; a list (fp32,bf16) times "
            "the same weights in each, interleaved, against the first."
        ),
    ],
    "auto",
)
BENCH_STRATEGIES = (
    Annotated[
        str,
        typer.Option(
            help="par, sjd, or a list (par,sjd) timed on the same weights, interleaved, "
            "against the first."
        ),
    ],
    "par",
)


@run_options(dtype=BENCH_DTYPES, strategy=BENCH_STRATEGIES)
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
    baseline: Annotated[
        bool,
        typer.Option(
            help="Also time a plain engine (no packed weights, whole-cache masked attention "
            "with the reference's kernels, no graphs or compile) on the same weights, "
            "interleaved with ours."
        ),
    ] = False,
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
    from parcli.quality.bench import (
        BenchSettings,
        copy_rate,
        default_sampling,
        pipelines_to_time,
        planned_cases,
        report,
        run_bench,
    )

    with user_errors():
        use_catalogue(catalogue)
        region_list = parse_region_list(regions)
        batches = tuple(parse_ints(batch_size, "batch_size"))
        if json_path is not None:
            check_writable(json_path, (".json",), setting="json")
        variants = bench_variants(run)
        options = next(iter(variants.values()))
        for each in variants.values():
            warn_if_emulated(each.torch_device, each.torch_dtype)
        sides = token_grid(grid, image_size)
        building = console.status(f"building {escape(arch)} with random weights") if arch else None
        with building or nullcontext():
            timed = {
                label: pipelines_to_time(
                    model,
                    arch,
                    region_list,
                    each,
                    checkpoint,
                    tokenizer,
                    sides,
                    seed,
                    model_fetcher(offline, quiet=label != OURS),
                    max(batches),
                )  # fmt: skip
                for label, each in variants.items()
            }
        pipelines, title = timed.pop(OURS)
        others = {label: pipes for label, (pipes, _) in timed.items()}
        baselines = {n: p.plain_engine_twin() for n, p in pipelines.items()} if baseline else None
        first = next(iter(pipelines.values()))
        sampling = default_sampling(first, options.cfg_scale)
        settings = BenchSettings(batches, sampling, warmup, repeats, decode, seed)
        rate = copy_rate(options.torch_device)
        planned = planned_cases(pipelines, settings, baselines, others)

        def write_json(rows: list[Row]) -> None:
            command = shlex.join(["par", *sys.argv[1:]])
            document = report(
                rows, pipelines, settings, title, arch is not None, rate, command, others,
                planned,
            )  # fmt: skip
            with atomic_path(json_path, "json") as tmp:
                tmp.write_text(json.dumps(document, indent=2) + "\n")

        with console.status("timing") as status:

            def on_run(text: str) -> None:
                status.update(f"timing · {escape(text)}")
                if verbose:
                    err_console.print(f"timing · {text}", markup=False, highlight=False)

            # The JSON is rewritten as each case is measured: a run stopped early leaves those.
            on_measured = write_json if json_path is not None else None
            rows = run_bench(pipelines, settings, rate, on_run, baselines, others, on_measured)
        print_report(title, rows, first, sampling, rate, decode, others, cold=not warmup)
        if json_path is not None:
            write_json(rows)
            console.print(f"wrote {escape(str(json_path))}", highlight=False)


def sample_word(pipe: Pipeline) -> str:
    """What one generated sample is called in bench's words."""
    return "clip" if pipe.is_video else "image"


def summary(rows: list[Row], item: str) -> str:
    """One line: our fastest case against n = 1, and each compared engine against ours."""
    ours = [row for row in rows if row.engine == OURS]
    best = min(ours, key=lambda row: row.gen_s_per_image)
    line = f"fastest: n={best.regions} batch {best.batch}, {best.gen_s_per_image:.3g} s per {item}"
    if best.speedup_vs_1:
        line += f" ({best.speedup_vs_1:.2f}x n=1)"
    for engine in dict.fromkeys(row.engine for row in rows if row.engine not in (OURS, PLAIN)):
        ratios = [row.speedup_vs_first for row in rows if row.engine == engine]
        line += f" · {engine}: {min(ratios):.2f}–{max(ratios):.2f}x as fast as ours"
    plain = [row.speedup_vs_plain for row in ours if row.speedup_vs_plain]
    if plain:
        line += f" · ours {min(plain):.2f}–{max(plain):.2f}x faster than the plain engine"
    return line


def print_report(title, rows, first, sampling, rate, decoded, others, cold=False) -> None:
    """Our table, then each comparison (the plain engine, other dtypes, int8, strategies), then
    a one-line summary."""
    print_table(title, [row for row in rows if row.engine == OURS], first, sampling, rate, decoded)
    if any(row.engine == PLAIN for row in rows):
        print_baseline_table(rows, sample_word(first))
    for engine, timed in others.items():
        print_comparison_table(rows, engine, first, next(iter(timed.values())))
    if any(row.noisy for row in rows):
        err_console.print(
            "⚠ timed repeats of these rows spread widely (see min–max): the machine is "
            "noisy; add --repeats or rerun on a quiet machine",
            style="yellow",
        )
    if cold:
        err_console.print("measured cold (--warmup 0): each case's times include its one-time "
                          "costs (compiling, packing, first allocations)")  # fmt: skip
    console.print(summary(rows, sample_word(first)), highlight=False)


def print_table(
    title: str,
    rows: list[Row],
    pipe: Pipeline,
    sampling: SamplingConfig,
    rate: float | None,
    decoded: bool,
) -> None:
    """One row per (n, batch), times per image; compact enough for 80 columns."""
    unit, time_text = time_format(rows)
    columns = [
        ("n", lambda r: str(r.regions)),
        ("batch", lambda r: str(r.batch)),
        ("passes", lambda r: f"{r.passes_per_image:.4g}"),
        ("gen", lambda r: time_text(r.gen_s_per_image) + (" ⚠" if r.noisy else "")),
        (
            "min–max",
            lambda r: f"{time_text(r.gen_s_per_image_min)}–{time_text(r.gen_s_per_image_max)}",
        ),
    ]
    if decoded:
        columns += [
            ("decode", lambda r: time_text(r.decode_s_per_image)),
            ("total", lambda r: time_text(r.total_s_per_image)),
        ]
    columns += [
        ("clips/s" if pipe.is_video else "img/s", lambda r: f"{r.images_per_s:.3g}"),
        ("vs n=1", lambda r: f"{r.speedup_vs_1:.2f}x" if r.speedup_vs_1 is not None else "–"),
        ("added mem", lambda r: bytes_text(r.peak_memory_added_bytes)),
    ]
    if rate:
        columns.append(("floor", lambda r: f"{100 * r.floor_fraction:.0f}%"))
    caption = _caption(pipe, sampling, rate) + f" · times in {unit} per {sample_word(pipe)}"
    table = Table(title=escape(title), caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    console.print(table)


def time_format(rows) -> tuple[str, Callable[..., str]]:
    """Milliseconds when every time is under a second, else seconds; 3 significant digits."""
    unit, scale = ("ms", 1e3) if max(r.total_s_per_image for r in rows) < 1 else ("s", 1.0)

    def time_text(seconds: float) -> str:
        value = seconds * scale
        return f"{value:.3g}" if value < 1000 else f"{value:.0f}"

    return unit, time_text


def print_baseline_table(rows, item: str) -> None:
    """Ours against the plain engine, generation only, same n and batch."""
    _print_comparison(
        rows, PLAIN, OURS, ("plain", "ours"), "speedup_vs_plain",
        title="ours vs plain engine",
        caption="plain: unpacked products, whole-cache masked attention with the reference's "
        "kernels (SDPA's math kernel after the first pass), no graphs, no compile", item=item,
    )  # fmt: skip


def print_comparison_table(rows, engine: str, first: Pipeline, other: Pipeline) -> None:
    """Another dtype, int8 or strategy against ours: same weights, generation only, same n
    and batch."""
    from parcli.engine.dtypes import dtype_name
    from parcli.engine.quantize import int8_products
    from parcli.quality.bench import weight_bytes

    base_name = dtype_name(first.model.dtype)
    base_bytes, other_bytes = weight_bytes(first), weight_bytes(other)
    caption = (
        f"weights read per pass: {bytes_text(base_bytes)} {base_name}, "
        f"{bytes_text(other_bytes)} {engine} ({other_bytes / base_bytes:.2f}x)"
    )
    if other.strategy.name != first.strategy.name:
        base_name = first.strategy.name
        caption = f"{engine}: {other.strategy.window} plan passes per iteration at most"
    elif engine == INT8:
        caption += f" · int8 products: {int8_products(other.model)}"
    elif other.packed:
        caption += f" · {engine}: {other.packed} packed projections"
    _print_comparison(
        rows, OURS, engine, (base_name, engine), "speedup_vs_first",
        title=f"{engine} vs {base_name}", caption=caption,
        item=sample_word(first),
    )  # fmt: skip


def _print_comparison(
    rows, base_engine: str, engine: str, names: tuple[str, str], speedup: str, title: str,
    caption: str, item: str = "image",
) -> None:  # fmt: skip
    """One engine's rows against another's, generation only, same n and batch: both times with
    their spread, the row's `speedup` field, and how many token cells the two drew alike."""
    base_rows = {(r.regions, r.batch): r for r in rows if r.engine == base_engine}
    compared = [r for r in rows if r.engine == engine and (r.regions, r.batch) in base_rows]
    # Another strategy draws the same law, not the same tokens: its passes say more than "same".
    strategies = any(r.strategy != base_rows[r.regions, r.batch].strategy for r in compared)
    unit, time_text = time_format(rows)
    note = (
        "passes: forward passes per image; per iteration: plan passes each made"
        if strategies
        else "same: the share of token cells both drew alike"
    )
    table = Table(
        title=f"{title}: token generation, {unit} per {item}",
        caption=f"{caption} · {note}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    last = ("passes", "per iteration") if strategies else ("same",)
    spreads = ("min–max",) * (not strategies)  # room for the passes instead
    headers = ("n", "batch", names[0], *spreads, names[1], *spreads, "speed-up",
               f"{names[1]} vs n=1", *last)  # fmt: skip
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for row in compared:
        base = base_rows[row.regions, row.batch]
        table.add_row(
            str(row.regions),
            str(row.batch),
            time_text(base.gen_s_per_image) + (" ⚠" if base.noisy else ""),
            *(f"{time_text(base.gen_s_per_image_min)}–{time_text(base.gen_s_per_image_max)}",)
            * (not strategies),
            time_text(row.gen_s_per_image) + (" ⚠" if row.noisy else ""),
            *(f"{time_text(row.gen_s_per_image_min)}–{time_text(row.gen_s_per_image_max)}",)
            * (not strategies),
            f"{getattr(row, speedup):.2f}x",
            f"{row.speedup_vs_1:.2f}x" if row.speedup_vs_1 else "",
            *(
                (f"{base.passes_per_image:.4g} → {row.passes_per_image:.4g}",
                 f"{row.passes_per_iteration:.3g}")
                if strategies
                else (_share_text(
                    row.tokens_same_as_ours if base.engine == OURS else base.tokens_same_as_ours
                ),)
            ),
        )  # fmt: skip
    console.print(table)


def _share_text(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.1f}%"


def _caption(pipe: Pipeline, sampling: SamplingConfig, rate: float | None) -> str:
    import torch

    threads = torch.get_num_threads()
    parts = [
        str(pipe.device)
        + (f" ({threads} thread{'s' if threads > 1 else ''})" if pipe.device.type == "cpu" else ""),
        str(pipe.model.dtype).removeprefix("torch."),
        f"cfg {sampling.cfg_scale}" if sampling.guided else "no guidance",
    ]
    if pipe.packed:
        parts.append(f"{pipe.packed} packed projections")
    if pipe.engine.reference_kernels:
        parts.append("the reference's kernels")
    if rate:
        rate_text = f"copy rate {rate / 1e12:.2f} TB/s"
        parts.append(f"{rate_text}; floor = (weights x passes + KV cache read) / copy rate")
    return " · ".join(parts)


def bench_variants(run: dict) -> dict[str, RunOptions]:
    """The options timed, by row label: ours (the first dtype and strategy), then the same
    weights in each further dtype, in int8 (--quantize) and with each further strategy."""
    dtypes = [part.strip() for part in run["dtype"].split(",") if part.strip()] or ["auto"]
    strategies = [part.strip() for part in run["strategy"].split(",") if part.strip()] or ["par"]
    # --window is for the strategies that take one; par walks one pass at a time.
    window = {name: None if name == "par" else run["window"] for name in strategies}
    base = {**run, "dtype": dtypes[0], "strategy": strategies[0], "quantize": None}
    base["window"] = window[strategies[0]]
    ours = RunOptions.resolve(**base)
    variants = {OURS: ours}
    for dtype in dtypes[1:]:
        each = RunOptions.resolve(**{**base, "dtype": dtype})
        if each.dtype != ours.dtype:
            variants[each.dtype] = each
    if run["quantize"] is not None:
        variants[INT8] = RunOptions.resolve(**{**base, "quantize": run["quantize"]})
    for strategy in strategies[1:]:
        variants[strategy] = RunOptions.resolve(
            **{**base, "strategy": strategy, "window": window[strategy]}
        )
    return variants
