"""Timing harness behind `par bench`: the real generation path, interleaved, with honest figures."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from parcli.config import GPT_PRESETS, GPTConfig
from parcli.engine.devices import cpu_name, proc_field
from parcli.engine.dtypes import dtype_name
from parcli.engine.memory import check_fits
from parcli.engine.packing import projection_bytes
from parcli.engine.quantize import int8_products
from parcli.errors import SettingError
from parcli.io.locate import Fetch, model_files
from parcli.model import RMSNorm, Transformer
from parcli.options import RunOptions
from parcli.pipeline import Pipeline, open_pipeline
from parcli.quality import INT8, OURS, PLAIN
from parcli.sampling import SamplingConfig
from parcli.strategies.par import DecodeStats
from parcli.vq import VQConfig, VQModel

WIDE_SPREAD = 0.15  # (max - min) / median above which a row is flagged as noisy

PLAIN_ENGINE = (
    "plain: unpacked products, whole-cache masked attention with the reference's kernels (SDPA's "
    "math kernel after the first pass), no graphs, no compile"
)
Engines = dict[str, dict[int, Pipeline]]  # by row label (OURS first), one pipeline per n


@dataclass(frozen=True)
class BenchSettings:
    """What every timed case shares."""

    batch_sizes: tuple[int, ...]
    sampling: SamplingConfig
    warmup: int = 1  # untimed rounds first (graph capture, compile)
    repeats: int = 3  # timed rounds; the cases interleave within each
    decode: bool = True  # also time the VQ decoder
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise SettingError("warmup", f"must be >= 0, not {self.warmup}")
        if self.repeats < 1:
            raise SettingError("repeats", f"must be >= 1, not {self.repeats}")


@dataclass
class Case:
    regions: int
    batch: int
    engine: str = OURS
    gen_seconds: list[float] = field(default_factory=list)  # per batch, one per repeat
    decode_seconds: list[float] = field(default_factory=list)
    added_bytes: int = 0  # peak memory over what was in use when the case started
    tokens: torch.Tensor | None = None  # the last generation's, on the CPU
    stats: DecodeStats = field(default_factory=DecodeStats)  # over the measured generations


@dataclass
class Row:
    regions: int
    batch: int
    engine: str
    strategy: str
    passes: int  # the plan's
    passes_per_image: float  # forward passes each image took part in (mean over images)
    query_tokens_per_image: float  # tokens fed to the transformer per image
    passes_per_iteration: float  # plan passes committed per forward pass
    gen_s_per_image: float  # median over repeats
    gen_s_per_image_min: float
    gen_s_per_image_max: float
    decode_s_per_image: float
    total_s_per_image: float
    images_per_s: float
    speedup_vs_1: float | None  # same engine, same batch
    speedup_vs_plain: float | None  # ours over the plain engine, same n and batch
    speedup_vs_first: float | None  # other engines: ours over them, same n and batch
    peak_memory_added_bytes: int  # over what was in use before the case (weights, other caches)
    noisy: bool
    # Other engines: the share of token cells equal to ours (not a per-token rate: a sequence's
    # first difference changes the rest).
    tokens_same_as_ours: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 resets the resident-set high-water mark (VmHWM)
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")


def memory_in_use(device: torch.device, peak: bool = False) -> int:
    """Bytes allocated on a GPU, else resident; `peak`: the most since `reset_peak_memory`."""
    if device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
        return int(allocated(device))
    size = proc_field("/proc/self/status", "VmHWM:" if peak else "VmRSS:")  # "123 kB"
    return int(size.split()[0]) * 1024 if size is not None else 0


def weight_bytes(pipe: Pipeline) -> int:
    """Bytes of weights a pass reads: not the embedding tables, of which it gathers a few rows."""
    norms = [m.weight for m in pipe.model.modules() if isinstance(m, RMSNorm)]
    return projection_bytes(pipe.model) + sum(w.nbytes for w in norms)


def machine_info(device: torch.device) -> dict:
    """What figures were measured on (for `par sample`'s manifest too)."""
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(
    engines: Engines,
    settings: BenchSettings,
    on_run: Callable[[str], None] = lambda text: None,
    on_measured: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Time every (regions, batch, engine) case, interleaved so that drift hits them alike;
    `on_measured` gets the rows so far after each measurement, so a run cut short leaves them."""
    cases = [Case(n, b, e) for n in engines[OURS] for b in settings.batch_sizes for e in engines]
    rounds = settings.warmup + settings.repeats
    for round_index, case in schedule(cases, settings.warmup, settings.repeats):
        measured = round_index >= settings.warmup
        pipe = engines[case.engine][case.regions]
        device = pipe.device
        labels = [i % pipe.model.cfg.num_classes for i in range(case.batch)]
        name = (
            f"{'measure' if measured else 'warm-up'} {round_index + 1}/{rounds}: "
            f"n={case.regions} b={case.batch} {case.engine}"
        )
        on_run(name)
        synchronize(device)
        reset_peak_memory(device)
        in_use = memory_in_use(device)
        pipe.stats = DecodeStats()
        started = time.perf_counter()
        tokens = pipe.generate(labels, settings.sampling, settings.seed, case.batch)
        synchronize(device)
        generated = time.perf_counter()
        if settings.decode:
            pipe.decode(tokens, batch_size=case.batch)
            synchronize(device)
        finished = time.perf_counter()
        case.tokens = tokens.cpu()
        decoded = f", decode {finished - generated:.3g} s" if settings.decode else ""
        on_run(f"{name}: generation {generated - started:.3g} s{decoded}")  # a log cut short
        if measured:
            case.gen_seconds.append(generated - started)
            case.decode_seconds.append(finished - generated)
            case.added_bytes = max(case.added_bytes, memory_in_use(device, peak=True) - in_use)
            case.stats.add(pipe.stats)
            if on_measured is not None:
                on_measured(summarise(cases, engines))
    return summarise(cases, engines)


def schedule(cases: list[Case], warmup: int, repeats: int) -> list[tuple[int, Case]]:
    """(round, case) in the order they run: rounds below `warmup` warm up."""
    first = [(r, case) for case in cases for r in range(warmup + min(repeats, 1))]
    return first + [(r, case) for r in range(warmup + 1, warmup + repeats) for case in cases]


def summarise(cases: list[Case], engines: Engines) -> list[Row]:
    """The rows of the cases measured so far."""
    rows = []
    tokens_of = {(c.regions, c.batch): c.tokens for c in cases if c.engine == OURS}
    cases = [case for case in cases if case.gen_seconds]
    median = {(c.regions, c.batch, c.engine): statistics.median(c.gen_seconds) for c in cases}
    for case in cases:
        pipe = engines[case.engine][case.regions]
        gen = median[case.regions, case.batch, case.engine]
        sequential = median.get((1, case.batch, case.engine))
        key = (case.regions, case.batch)
        plain = median.get((*key, PLAIN)) if case.engine == OURS else None
        first = median.get((*key, OURS)) if case.engine not in (OURS, PLAIN) else None
        dec = statistics.median(case.decode_seconds)
        spread = (max(case.gen_seconds) - min(case.gen_seconds)) / gen if gen else 0.0
        ours = tokens_of.get(key) if case.engine != OURS else None
        same = None if ours is None else (case.tokens == ours).float().mean().item()
        rows.append(
            Row(
                regions=case.regions,
                batch=case.batch,
                engine=case.engine,
                strategy=pipe.strategy.name,
                passes=pipe.plan.num_passes,
                **case.stats.per_image(),
                gen_s_per_image=gen / case.batch,
                gen_s_per_image_min=min(case.gen_seconds) / case.batch,
                gen_s_per_image_max=max(case.gen_seconds) / case.batch,
                decode_s_per_image=dec / case.batch,
                total_s_per_image=(gen + dec) / case.batch,
                images_per_s=case.batch / (gen + dec),
                speedup_vs_1=sequential / gen if sequential else None,
                speedup_vs_plain=plain / gen if plain else None,
                speedup_vs_first=first / gen if first else None,
                peak_memory_added_bytes=case.added_bytes,
                noisy=spread > WIDE_SPREAD,
                tokens_same_as_ours=same,
            )
        )
    return rows


def random_pipelines(
    cfg: GPTConfig,
    regions: Sequence[int],
    options: RunOptions,
    vq_config: VQConfig | None = None,
    seed: int = 0,
) -> dict[int, Pipeline]:
    """Random weights of an architecture, one set shared by every n (speed only)."""
    torch.manual_seed(seed)
    with torch.device(options.torch_device):
        base = Transformer(replace(cfg, regions=max(regions)))
        base.init_weights(zero_output=False)
        vq = VQModel(vq_config or VQConfig()).eval()
    shared = base.to(options.torch_dtype).eval().state_dict()
    special = "spe_tok_embeddings.special_embeddings.weight"
    pipelines = {}
    for n in regions:
        with torch.device("meta"):
            model = Transformer(replace(cfg, regions=n))
        state = {k: v for k, v in shared.items() if k != special}
        if n > 1:
            state[special] = shared[special][: n - 1]
        model.load_state_dict(state, assign=True)
        name = f"{cfg.arch} (random weights)"
        pipelines[n] = Pipeline(model.eval(), vq, name, SamplingConfig(1.5), options)
    return pipelines


def pipelines_to_time(
    model: str | None,
    arch: str | None,
    regions: Sequence[int],
    options: RunOptions,
    checkpoint: Path | None = None,
    tokenizer: Path | None = None,
    grid: tuple[int, ...] = (24, 24),
    seed: int = 0,
    fetch: Fetch | None = None,
    batch: int = 1,
) -> tuple[dict[int, Pipeline], str]:
    """One pipeline per region count, of `arch`'s random weights or the model given, and a title."""
    if arch is None:
        pipelines = {
            n: open_pipeline(model_files(model, n, checkpoint, tokenizer, fetch), options, n, batch)
            for n in regions
        }
        return pipelines, " / ".join(p.name for p in pipelines.values())
    if model is not None or checkpoint is not None:
        raise SettingError("arch", "times random weights; give no model or checkpoint with it")
    if arch not in GPT_PRESETS:
        raise SettingError("arch", f"unknown architecture {arch!r}; use {', '.join(GPT_PRESETS)}")
    cfg = GPTConfig.preset(arch, grid=grid)
    guided = options.cfg_scale is None or options.cfg_scale > 1
    check_fits(replace(cfg, regions=max(regions)), VQConfig(), options.torch_device,
               options.torch_dtype, batch, None, guided)  # fmt: skip
    pipelines = random_pipelines(cfg, regions, options, seed=seed)
    return pipelines, f"{arch} · random weights: speed only · grid {'x'.join(map(str, grid))}"


def report(
    rows: list[Row],
    engines: Engines,
    settings: BenchSettings,
    title: str,
    random_weights: bool,
    command: str,
    planned: int | None = None,
) -> dict:
    """Every figure of a run and what it ran on, for `--json`; `planned`: a whole run's rows."""
    first = next(iter(engines[OURS].values()))
    int8 = next(iter(engines[INT8].values())) if INT8 in engines else None
    return {
        "command": command,
        "machine": machine_info(first.device),
        "model": title,
        "random_weights": random_weights,
        "options": first.run_options(settings.sampling).to_dict(),
        "settings": {
            "dtype": str(first.model.dtype).removeprefix("torch."),
            "cfg_scale": settings.sampling.cfg_scale,
            "guided": settings.sampling.guided,
            "compile": first.engine.compiled,
            "int8_products": int8_products(int8.model) if int8 is not None else None,
            "compared_dtypes": [name for name in engines if name not in (OURS, PLAIN, INT8)],
            "grid": list(first.plan.grid),
            "runner": first.engine.runner,
            "speedups": first.engine.speedups(),
            "reference_kernels": first.engine.reference_kernels,
        },
        "rows": [asdict(row) for row in rows],
        "complete": planned is None or len(rows) == planned,
        "cases_planned": len(rows) if planned is None else planned,
    }


def bytes_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1024
    return str(count)


def print_report(
    out: Console, err: Console, title: str, rows: list[Row], engines: Engines,
    sampling: SamplingConfig, decoded: bool, cold: bool,
) -> None:  # fmt: skip
    """Our table, one per compared engine, then a one-line summary."""
    first = next(iter(engines[OURS].values()))
    item = "clip" if first.is_video else "image"
    ours = [r for r in rows if r.engine == OURS]
    out.print(_our_table(title, ours, first, sampling, decoded, item))
    for engine, pipes in engines.items():
        if engine != OURS:
            out.print(_comparison(rows, engine, first, next(iter(pipes.values())), item))
    if any(row.noisy for row in rows):
        err.print(
            "⚠ timed repeats of these rows spread widely (see min–max): the machine is "
            "noisy; add --repeats or rerun on a quiet machine",
            style="yellow",
        )
    if cold:
        err.print("measured cold (--warmup 0): each case's times include its one-time costs "
                  "(compiling, packing, first allocations)")  # fmt: skip
    out.print(summary(rows, item), highlight=False)


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


Column = tuple[str, Callable[[Row], str]]  # a header, and a row's cell under it
KEY: list[Column] = [("n", lambda r: str(r.regions)), ("batch", lambda r: str(r.batch))]


def _table(title: str, caption: str, columns: list[Column], rows: list[Row]) -> Table:
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    return table


def _time_text(rows: list[Row]) -> tuple[str, Callable[[float], str]]:
    """Milliseconds when every time is under a second, else seconds; 3 significant digits."""
    unit, scale = ("ms", 1e3) if max(r.total_s_per_image for r in rows) < 1 else ("s", 1.0)
    return unit, lambda seconds: f"{seconds * scale:{'.3g' if seconds * scale < 1000 else '.0f'}}"


def _gen_columns(
    header: str, text: Callable[[float], str], spread: bool, of: Callable[[Row], Row] = lambda r: r
) -> list[Column]:
    """The median generation time of the row `of` gives (marked when noisy), and its spread."""

    def gen(row: Row) -> str:
        return text(of(row).gen_s_per_image) + (" ⚠" if of(row).noisy else "")

    def span(row: Row) -> str:
        return f"{text(of(row).gen_s_per_image_min)}–{text(of(row).gen_s_per_image_max)}"

    return [(header, gen), *([("min–max", span)] if spread else [])]


def _our_table(title, rows, pipe, sampling, decoded, item) -> Table:
    """One row per (n, batch), times per image; compact enough for 80 columns."""
    unit, text = _time_text(rows)
    columns = [
        *KEY,
        ("passes", lambda r: f"{r.passes_per_image:.4g}"),
        *_gen_columns("gen", text, True),
    ]
    if decoded:
        columns += [
            ("decode", lambda r: text(r.decode_s_per_image)),
            ("total", lambda r: text(r.total_s_per_image)),
        ]
    columns += [
        ("clips/s" if pipe.is_video else "img/s", lambda r: f"{r.images_per_s:.3g}"),
        ("vs n=1", lambda r: f"{r.speedup_vs_1:.2f}x" if r.speedup_vs_1 is not None else "–"),
        ("added mem", lambda r: bytes_text(r.peak_memory_added_bytes)),
    ]
    threads = torch.get_num_threads()
    on = f" ({threads} thread{'s' if threads > 1 else ''})" if pipe.device.type == "cpu" else ""
    parts = [
        f"{pipe.device}{on}",
        str(pipe.model.dtype).removeprefix("torch."),
        f"cfg {sampling.cfg_scale}" if sampling.guided else "no guidance",
    ]
    if pipe.packed:
        parts.append(f"{pipe.packed} packed projections")
    if pipe.engine.reference_kernels:
        parts.append("the reference's kernels")
    parts.append(f"times in {unit} per {item}")
    return _table(escape(title), " · ".join(parts), columns, rows)


def _comparison(rows: list[Row], engine: str, first: Pipeline, other: Pipeline, item: str) -> Table:
    """`engine` against ours (ours against the plain engine): the tokens both drew alike, or for
    strategies (which draw the same law, not the same tokens) the passes each took."""
    base_engine, shown = (PLAIN, OURS) if engine == PLAIN else (OURS, engine)
    bases = {(r.regions, r.batch): r for r in rows if r.engine == base_engine}
    compared = [r for r in rows if r.engine == shown and (r.regions, r.batch) in bases]

    def base(row: Row) -> Row:
        return bases[row.regions, row.batch]

    def same(row: Row) -> str:
        share = (base(row) if row.engine == OURS else row).tokens_same_as_ours
        return "" if share is None else f"{100 * share:.1f}%"

    if engine == PLAIN:
        names, caption = ("plain", "ours"), PLAIN_ENGINE
    elif other.strategy.name != first.strategy.name:
        names = (first.strategy.name, engine)
        caption = f"{engine}: {other.strategy.window} plan passes per iteration at most"
    else:
        names = (dtype_name(first.model.dtype), engine)
        base_bytes, other_bytes = weight_bytes(first), weight_bytes(other)
        caption = (
            f"weights read per pass: {bytes_text(base_bytes)} {names[0]}, "
            f"{bytes_text(other_bytes)} {engine} ({other_bytes / base_bytes:.2f}x)"
        )
        if engine == INT8:
            caption += f" · int8 products: {int8_products(other.model)}"
        elif other.packed:
            caption += f" · {engine}: {other.packed} packed projections"
    strategies = any(r.strategy != base(r).strategy for r in compared)
    unit, text = _time_text(rows)
    columns = [
        *KEY,
        *_gen_columns(names[0], text, not strategies, base),
        *_gen_columns(names[1], text, not strategies),
        ("speed-up", lambda r: f"{r.speedup_vs_plain or r.speedup_vs_first:.2f}x"),
        (f"{names[1]} vs n=1", lambda r: f"{r.speedup_vs_1:.2f}x" if r.speedup_vs_1 else ""),
    ]
    if strategies:
        columns += [
            ("passes", lambda r: f"{base(r).passes_per_image:.4g} → {r.passes_per_image:.4g}"),
            ("per iteration", lambda r: f"{r.passes_per_iteration:.3g}"),
        ]
        note = "passes: forward passes per image; per iteration: plan passes each made"
    else:
        columns.append(("same", same))
        note = "same: the share of token cells both drew alike"
    title = "ours vs plain engine" if engine == PLAIN else f"{engine} vs {names[0]}"
    title += f": token generation, {unit} per {item}"
    return _table(title, f"{caption} · {note}", columns, compared)
