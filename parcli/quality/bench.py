"""Timing harness behind `par bench`: the real generation path, interleaved, with honest figures."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from parcli.config import GPT_PRESETS, GPTConfig
from parcli.engine.devices import cpu_name
from parcli.engine.memory import check_fits
from parcli.engine.quantize import int8_products
from parcli.errors import SettingError
from parcli.io.locate import Fetch, model_files
from parcli.options import RunOptions
from parcli.pipeline import Pipeline, open_pipeline
from parcli.quality import INT8, OURS, PLAIN
from parcli.sampling import SamplingConfig
from parcli.strategies import DecodeStats
from parcli.vq import VQConfig

WIDE_SPREAD = 0.15  # (max - min) / median above which a row is flagged as noisy


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
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise SettingError("batch_size", f"must be positive, not {self.batch_sizes}")


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
    speedup_vs_first: float | None  # int8 and other-dtype rows: ours over them, same n and batch
    peak_memory_added_bytes: int  # over what was in use before the case (weights, other caches)
    floor_fraction: float | None  # floor_seconds / time (CUDA only: the copy rate is measured)
    noisy: bool
    # Other engines: the share of token cells equal to ours, same n, batch, labels and seed (after
    # a sequence's first difference the rest follow from it, so this is not a per-token rate).
    tokens_same_as_ours: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the resident-set high-water mark (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def process_status_bytes(field: str) -> int | None:
    """A size Linux's /proc/self/status gives this process (`VmRSS`, `VmHWM`), in bytes; None
    where there is no such file or field."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_in_use(device: torch.device) -> int:
    """Bytes allocated on a GPU, or this process's resident memory elsewhere (0 if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return process_status_bytes("VmRSS") or 0


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = process_status_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def copy_rate(device: torch.device, size_bytes: int = 1 << 30, repeats: int = 50) -> float | None:
    """Device-to-device copy rate in bytes (read + written) per second: the best of `repeats`
    copies timed by CUDA events, so the host's timer and a slow first copy never lower it."""
    if device.type != "cuda":
        return None
    src = torch.empty(size_bytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    stream = torch.cuda.current_stream(device)
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
    marks[0].record(stream)
    for mark in marks[1:]:
        dst.copy_(src)
        mark.record(stream)
    synchronize(device)
    fastest = min(a.elapsed_time(b) for a, b in zip(marks, marks[1:], strict=False)) / 1e3
    del src, dst
    return 2 * size_bytes / fastest


def weight_bytes(pipe: Pipeline) -> int:
    """Bytes of weights one forward pass reads: not the embedding tables, of which a pass gathers
    only a few rows."""
    from parcli.engine.packing import projection_bytes
    from parcli.model import RMSNorm

    norms = [m.weight for m in pipe.model.modules() if isinstance(m, RMSNorm)]
    return projection_bytes(pipe.model) + sum(w.numel() * w.element_size() for w in norms)


def cache_bytes_read(pipe: Pipeline, sequences: int) -> int:
    """Bytes of keys and values a whole generation of `sequences` sequences must read, heads at
    their own width (padding is ours)."""
    cfg = pipe.model.cfg
    per_slot = 2 * cfg.n_layer * sequences * cfg.dim * pipe.model.dtype.itemsize
    return per_slot * sum(step.end for step in pipe.plan.passes)


def floor_seconds(pipe: Pipeline, batch: int, guided: bool, rate: float) -> float:
    """The least time a batch's generation can take at copy rate `rate`: every pass reads the
    weights once and the visible KV cache once."""
    sequences = batch * (2 if guided else 1)
    weights = weight_bytes(pipe) * pipe.plan.num_passes
    return (weights + cache_bytes_read(pipe, sequences)) / rate


def machine_info(device: torch.device) -> dict:
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
    pipelines: dict[int, Pipeline],
    settings: BenchSettings,
    rate: float | None = None,
    on_run: Callable[[str], None] | None = None,
    baselines: dict[int, Pipeline] | None = None,
    others: dict[str, dict[int, Pipeline]] | None = None,
    on_measured: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Time every (regions, batch, engine) case; `baselines` and `others` are timed beside ours.

    Each case warms up just before its first measurement, so a run stopped early has measured
    what it warmed up; further repeats interleave across cases so that drift hits them alike.
    `on_measured` gets the rows so far after each measurement, so a run cut short leaves them.
    """
    engines = {OURS: pipelines, **({PLAIN: baselines} if baselines else {}), **(others or {})}
    cases = [Case(n, b, e) for n in pipelines for b in settings.batch_sizes for e in engines]
    total_rounds = settings.warmup + settings.repeats
    for round_index, case in schedule(cases, settings.warmup, settings.repeats):
        measured = round_index >= settings.warmup
        pipe = engines[case.engine][case.regions]
        device = pipe.device
        labels = [i % pipe.model.cfg.num_classes for i in range(case.batch)]
        phase = "measure" if measured else "warm-up"
        name = (
            f"{phase} {round_index + 1}/{total_rounds}: "
            f"n={case.regions} b={case.batch} {case.engine}"
        )
        if on_run is not None:
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
        if on_run is not None:  # as they come: a run cut short still shows them
            seconds = f"generation {generated - started:.3g} s"
            if settings.decode:
                seconds += f", decode {finished - generated:.3g} s"
            on_run(f"{name}: {seconds}")
        if measured:
            case.gen_seconds.append(generated - started)
            case.decode_seconds.append(finished - generated)
            case.added_bytes = max(case.added_bytes, peak_memory(device) - in_use)
            case.stats.add(pipe.stats)
            if on_measured is not None:
                on_measured(summarise(cases, engines, rate, settings.sampling.guided))
    return summarise(cases, engines, rate, settings.sampling.guided)


def schedule(cases: list[Case], warmup: int, repeats: int) -> list[tuple[int, Case]]:
    """(round, case) in the order they run: rounds below `warmup` warm up."""
    order = []
    for case in cases:
        order += [(r, case) for r in range(warmup + min(repeats, 1))]
    for r in range(warmup + 1, warmup + repeats):
        order += [(r, case) for case in cases]
    return order


def planned_cases(
    pipelines: dict[int, Pipeline],
    settings: BenchSettings,
    baselines: dict[int, Pipeline] | None = None,
    others: dict[str, dict[int, Pipeline]] | None = None,
) -> int:
    """How many rows a whole run gives."""
    engines = 1 + (1 if baselines else 0) + len(others or {})
    return len(pipelines) * len(settings.batch_sizes) * engines


def summarise(
    cases: list[Case],
    engines: dict[str, dict[int, Pipeline]],
    rate: float | None = None,
    guided: bool = True,
) -> list[Row]:
    """The rows of the cases measured so far."""
    rows = []
    tokens_of = {(c.regions, c.batch): c.tokens for c in cases if c.engine == OURS}
    cases = [case for case in cases if case.gen_seconds]
    median = {(c.regions, c.batch, c.engine): statistics.median(c.gen_seconds) for c in cases}
    for case in cases:
        pipe = engines[case.engine][case.regions]
        gen = median[case.regions, case.batch, case.engine]
        sequential = median.get((1, case.batch, case.engine))
        plain = median.get((case.regions, case.batch, PLAIN)) if case.engine == OURS else None
        compared = case.engine not in (OURS, PLAIN)
        first = median.get((case.regions, case.batch, OURS)) if compared else None
        dec = statistics.median(case.decode_seconds)
        per_image = [t / case.batch for t in case.gen_seconds]
        spread = (max(case.gen_seconds) - min(case.gen_seconds)) / gen if gen else 0.0
        floor = None
        if rate:
            floor = floor_seconds(pipe, case.batch, guided, rate) / gen
        same = None
        ours = tokens_of.get((case.regions, case.batch)) if case.engine != OURS else None
        if ours is not None and case.tokens is not None:
            same = (case.tokens == ours).float().mean().item()
        rows.append(
            Row(
                regions=case.regions,
                batch=case.batch,
                engine=case.engine,
                strategy=pipe.strategy.name,
                passes=pipe.plan.num_passes,
                **case.stats.per_image(),
                gen_s_per_image=gen / case.batch,
                gen_s_per_image_min=min(per_image),
                gen_s_per_image_max=max(per_image),
                decode_s_per_image=dec / case.batch,
                total_s_per_image=(gen + dec) / case.batch,
                images_per_s=case.batch / (gen + dec),
                speedup_vs_1=sequential / gen if sequential else None,
                speedup_vs_plain=plain / gen if plain else None,
                speedup_vs_first=first / gen if first else None,
                peak_memory_added_bytes=case.added_bytes,
                floor_fraction=floor,
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
    """Random weights of an architecture (speed only), one set shared by every n: the n-region
    model takes the first n - 1 transition tokens."""
    from parcli.model import Transformer
    from parcli.vq import VQModel

    torch.manual_seed(seed)
    with torch.device(options.torch_device):
        base = Transformer(replace(cfg, regions=max(regions)))
        base.init_weights(zero_output=False)
        vq = VQModel(vq_config or VQConfig.llamagen_ds16()).eval()
    base = base.to(options.torch_dtype).eval()
    shared = base.state_dict()
    special = "spe_tok_embeddings.special_embeddings.weight"
    name = f"{cfg.arch} (random weights)"
    pipelines = {}
    for n in regions:
        with torch.device("meta"):
            model = Transformer(replace(cfg, regions=n))
        state = {k: v for k, v in shared.items() if k != special}
        if n > 1:
            state[special] = shared[special][: n - 1]
        model.load_state_dict(state, assign=True)
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
    """One pipeline per region count, and a title: random weights of `arch`, or the model a name
    or files give; refused first where a batch cannot fit in memory."""
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
    check_fits(replace(cfg, regions=max(regions)), VQConfig.llamagen_ds16(), options.torch_device,
               options.torch_dtype, batch, None, guided)  # fmt: skip
    pipelines = random_pipelines(cfg, regions, options, seed=seed)
    return pipelines, f"{arch} · random weights: speed only · grid {'x'.join(map(str, grid))}"


def default_sampling(pipe: Pipeline, cfg_scale: float | None) -> SamplingConfig:
    """Guidance on unless asked otherwise: the model's scale, at least 1.5."""
    return pipe.sampling(cfg_scale if cfg_scale is not None else max(pipe.default_cfg_scale, 1.5))


def report(
    rows: list[Row],
    pipelines: dict[int, Pipeline],
    settings: BenchSettings,
    title: str,
    random_weights: bool,
    rate: float | None,
    command: str,
    others: dict[str, dict[int, Pipeline]] | None = None,
    planned: int | None = None,
) -> dict:
    """Every figure of a run, with what it ran on, for `par bench --json`; written as cases end,
    so `planned` says how many rows a whole run gives."""
    first = next(iter(pipelines.values()))
    others = others or {}
    int8 = next(iter(others[INT8].values())) if INT8 in others else None
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
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "compile": first.engine.compiled,
            "packed_kernel": first.packed,
            "int8_products": int8_products(int8.model) if int8 is not None else None,
            "compared_dtypes": [name for name in others if name != INT8],
            "decode": settings.decode,
            "baseline": any(row.engine == PLAIN for row in rows),
            "grid": list(first.plan.grid),
            "runner": first.engine.runner,
            "speedups": first.engine.speedups(),
            "reference_kernels": first.engine.reference_kernels,
        },
        "weight_bytes": weight_bytes(first),
        "copy_rate_bytes_per_s": rate,
        "rows": [asdict(row) for row in rows],
        "complete": planned is None or len(rows) == planned,
        "cases_planned": len(rows) if planned is None else planned,
    }
