"""Weight-only int8 (opt-in: its tokens differ), a scale per output channel as in gpt-fast. Where
widening to bf16 beats the fused product is timed once per machine and remembered in
`<cache>/kernels.json`: kernels round differently, so a choice that moved with noise would move
tokens."""

from __future__ import annotations

import contextlib
import json
import timeit
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from parcli.engine.devices import cpu_name

QUANTIZATIONS = ("int8",)
# What the projections' inputs are rounded to: CUDA runs the model in bf16 already, and on the
# CPU bf16 is the fused kernel's fast path.
ACTIVATION_DTYPE = torch.bfloat16
FUSED, WIDENED = "torch._weight_int8pack_mm", "widened to bf16"
NEVER = "never"


class Int8Linear(nn.Module):
    """A bias-free projection with an int8 weight and a scale per output channel."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.out_features, self.in_features = weight.shape
        self.nbytes = quantized.numel() + scales.numel() * 4  # what a product reads
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("kernel_scales", scales.to(ACTIVATION_DTYPE), persistent=False)
        # Products of this many rows or more widen the weight; None: none do.
        self.widen_from_rows: int | None = None if _kernel_runs(weight.device) else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(ACTIVATION_DTYPE)
        if self.widen_from_rows is not None and rows.shape[0] >= self.widen_from_rows:
            out = F.linear(rows, _widened(self.weight_int8)) * self.kernel_scales
        else:
            out = torch._weight_int8pack_mm(rows, self.weight_int8, self.kernel_scales)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


_scratch: dict[torch.device, torch.Tensor] = {}


def _widened(weight: torch.Tensor) -> torch.Tensor:
    """`weight` as bfloat16 in a reused scratch buffer (a fresh one costs more than the copy)."""
    buffer = _scratch.get(weight.device)
    if buffer is None or buffer.numel() < weight.numel():
        buffer = torch.empty(weight.numel(), dtype=ACTIVATION_DTYPE, device=weight.device)
        _scratch[weight.device] = buffer
    return buffer[: weight.numel()].view(weight.shape).copy_(weight)


@cache
def _kernel_runs(device: torch.device) -> bool:
    """Whether this build has the fused int8 product for `device` (probed once)."""
    try:
        x = torch.ones(1, 64, device=device, dtype=ACTIVATION_DTYPE)
        w = torch.ones(8, 64, device=device, dtype=torch.int8)
        s = torch.ones(8, device=device, dtype=ACTIVATION_DTYPE)
        return bool(torch._weight_int8pack_mm(x, w, s).isfinite().all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def swap_linears(model: nn.Module, swap: Callable[[nn.Linear], nn.Module]) -> None:
    """Replace every (bias-free) `nn.Linear` inside `model` by `swap(it)`, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, swap(child))


def quantize_int8(model: nn.Module) -> nn.Module:
    """Swap every projection of the transformer for an `Int8Linear`, in place; returns it."""
    swap_linears(model, lambda linear: Int8Linear(linear.weight))
    return model


def choose_products(model: nn.Module) -> None:
    """Let each CPU int8 projection take the faster product at the run's thread count."""
    threads = torch.get_num_threads()
    for linear, shape in _products_with_a_choice(model):
        linear.widen_from_rows = widening_rows(shape, threads)


def products_to_time(model: nn.Module) -> bool:
    """Whether `choose_products` would time some of `model`'s products first."""
    threads = torch.get_num_threads()
    return any(
        _widening_key(shape, threads) not in remembered()
        for _, shape in _products_with_a_choice(model)
    )


def _products_with_a_choice(model: nn.Module) -> list[tuple[Int8Linear, tuple[int, int]]]:
    """The CPU int8 projections that can choose between the two products, with their shapes."""
    return [
        (linear, (linear.out_features, linear.in_features))
        for linear in int8_linears(model)
        if linear.weight_int8.device.type == "cpu" and _kernel_runs(linear.weight_int8.device)
    ]


def _widening_key(shape: tuple[int, int], threads: int) -> str:
    """Qualified by what decides which product is faster: CPU, torch and thread count."""
    what = f"int8 {shape[0]}x{shape[1]} widen from rows"
    return f"{cpu_name()} | torch {torch.__version__} | {threads} threads | {what}"


def _best_seconds(run: Callable[[], object]) -> float:
    """The fastest of two timed calls of `run`, after one untimed call to warm it."""
    run()
    return min(timeit.repeat(run, number=1, repeat=2))


def kernels_path() -> Path:
    from parcli.io.hub import cache_dir

    return cache_dir() / "kernels.json"


def remembered() -> dict[str, str]:
    """The choices timed here so far, by key; an unreadable file is timed again."""
    from parcli.io.files import read_json

    data = read_json(kernels_path()) or {}
    return {k: v for k, v in data.items() if isinstance(v, str)}


def remember(key: str, choice: str) -> None:
    from parcli.errors import UserError
    from parcli.io.files import atomic_write

    text = json.dumps({**remembered(), key: choice}, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(OSError, UserError):  # atomic_write reports OSErrors as OutputError
        kernels_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(kernels_path(), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def int8_linears(model: nn.Module) -> list[Int8Linear]:
    return [m for m in model.modules() if isinstance(m, Int8Linear)]


# Row counts of PAR's passes at small batches; POOL_BYTES exceeds a last-level cache, so the timed
# products read their weights from memory as a pass does.
ROW_CANDIDATES = (4, 8, 16, 32, 64)
POOL_BYTES = 64 << 20
MOST_COPIES = 64


@cache
def widening_rows(shape: tuple[int, int], threads: int) -> int | None:
    """The fewest rows from which widening an int8 (out, in) weight clearly beats the fused
    product here; None where it never does. Timed once, then remembered."""
    key = _widening_key(shape, threads)
    known = remembered().get(key)
    if known is not None:
        return None if known == NEVER else int(known)
    copies = max(2, min(MOST_COPIES, POOL_BYTES // (shape[0] * shape[1])))
    pool = torch.full((copies, *shape), 3, dtype=torch.int8)
    scales = torch.ones(shape[0], dtype=ACTIVATION_DTYPE)
    threshold = None
    for rows in reversed(ROW_CANDIDATES):  # widening wins from some row count up, if ever
        x = torch.ones(rows, shape[1], dtype=ACTIVATION_DTYPE)

        def fused(x=x):
            for weight in pool:
                torch._weight_int8pack_mm(x, weight, scales)

        def widened(x=x):
            for weight in pool:
                F.linear(x, _widened(weight)) * scales

        if _best_seconds(widened) >= 0.9 * _best_seconds(fused):
            break
        threshold = rows
    remember(key, NEVER if threshold is None else str(threshold))
    return threshold


def int8_products(model: nn.Module) -> str | None:
    """Which products the int8 projections take, in words; None without any."""
    linears = int8_linears(model)
    if not linears:
        return None
    thresholds = {linear.widen_from_rows for linear in linears}
    if thresholds == {None}:
        return FUSED
    if thresholds == {1}:
        return WIDENED
    known = sorted(t for t in thresholds if t is not None)
    span = str(known[0]) if len(known) == 1 else f"{known[0]} to {known[-1]}"
    some = " (some shapes never)" if None in thresholds else ""
    return f"{FUSED} below {span} rows, {WIDENED} from there{some}"
