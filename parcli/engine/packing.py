"""CPU projections pre-packed for the row count of a pass, swapped into a transformer.

The same products, faster on CPU than plain `F.linear`: MKL's by 5 to 45 % on an Intel CPU,
oneDNN's by 2 to 3x on an AMD EPYC where MKL's are slow, so the faster of the two is measured on
the machine at hand when the weights are packed. Like gpt-fast's quantisation, packing replaces
modules from the outside: every `nn.Linear` becomes a `PackedLinear`, and each feed-forward's
w1 and w3 become one product. Inference only.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from parcli.engine.choices import best_seconds, machine_key, remember, remembered
from parcli.engine.devices import available_memory
from parcli.engine.quantize import quantized_bytes
from parcli.model import FeedForward, Transformer


class PackedLinear(nn.Module):
    """A bias-free projection with its weight pre-packed for `input_rows`-row inputs (CPU only).

    With `keep_unpacked`, MKL packs a copy and keeps the original weight, which inputs of any
    other row count multiply by: the fastest products, at twice the memory. Without it, oneDNN
    repacks the weight in place of the original (3 to 10 % slower here, no extra memory).
    """

    def __init__(self, weight: torch.Tensor, input_rows: int, keep_unpacked: bool = True):
        super().__init__()
        weight = weight.detach()
        self.input_rows = input_rows
        self.nbytes = weight.numel() * weight.element_size()  # what a product reads
        self.weight = weight if keep_unpacked else None
        if keep_unpacked:
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, input_rows)
        else:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, input_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, None, self.input_rows)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


class PackedFeedForward(nn.Module):
    """`parcli.model.FeedForward` with w1 and w3 as one packed product, and w2 packed."""

    def __init__(self, plain: FeedForward, input_rows: int, keep_unpacked: bool):
        super().__init__()
        gate_and_up = torch.cat([plain.w1.weight, plain.w3.weight])
        self.w13 = PackedLinear(gate_and_up, input_rows, keep_unpacked)
        self.w2 = PackedLinear(plain.w2.weight, input_rows, keep_unpacked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def packing_available(keep_unpacked: bool, dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has the packing ops (MKL's, or oneDNN's in place) for `dtype`:
    MKL's are float32 only; oneDNN packs bfloat16 too, where it has a bfloat16 kernel."""
    if keep_unpacked:
        return (
            dtype == torch.float32
            and torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_linear")
        )
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32


MKL, ONEDNN = "MKL", "oneDNN"


def pack_projections(model: Transformer, input_rows: int, kernel: str | None = None) -> str | None:
    """Pre-pack every projection of a float32 or bfloat16 CPU model for `input_rows`-row inputs;
    returns the kernel that packed them, or None (changing nothing) where this torch build
    cannot pack.

    `kernel` None takes, in float32, the faster of MKL's and oneDNN's products for this model's
    largest projection on this machine (`fastest_kernel`): their speeds differ by CPU vendor (MKL
    was 2 to 4x slower than oneDNN on an AMD EPYC). MKL keeps a second copy of every weight, so
    it is taken only while that copy fits twice over in the memory still free; oneDNN packs in
    place. bfloat16 has oneDNN's alone: unpacked, oneDNN reorders the weight at every product
    (packed, GPT-B's generation ran 1.3 to 1.6x faster on an AMD EPYC with AVX512-BF16).
    """
    largest = max(
        (m.weight for m in model.modules() if isinstance(m, nn.Linear)), key=lambda w: w.numel()
    )
    dtype = largest.dtype
    if dtype == torch.bfloat16:
        kernel = ONEDNN
    elif dtype != torch.float32:
        return None
    elif kernel is None:
        kernel = fastest_kernel(tuple(largest.shape), input_rows, torch.get_num_threads())
    if kernel == MKL:
        spare = available_memory()
        if not (spare is None or 2 * projection_bytes(model) < spare):
            kernel = ONEDNN
    if kernel is None or not packing_available(kernel == MKL, dtype):
        return None
    keep_unpacked = kernel == MKL
    for block in model.layers:
        block.feed_forward = PackedFeedForward(block.feed_forward, input_rows, keep_unpacked)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child.weight, input_rows, keep_unpacked))
    return kernel


@functools.cache
def fastest_kernel(shape: tuple[int, int], rows: int, threads: int) -> str | None:
    """The faster packed product for a (out, in) weight and `rows`-row inputs on this machine,
    on `threads` threads (the count the run uses); None where neither is available.

    Timed once per machine, shape, row count and thread count (`parcli.engine.choices`). oneDNN
    must win by 10 % to replace MKL, the kernel earlier versions always used.
    """
    usable = [k for k in (MKL, ONEDNN) if packing_available(k == MKL)]
    if len(usable) < 2:
        return usable[0] if usable else None
    key = machine_key(f"{shape[0]}x{shape[1]} | {rows} rows", threads)
    known = remembered(key)
    if known in usable:
        return known
    weight = torch.randn(shape)
    x = torch.randn(rows, shape[1])
    seconds = {}
    for kernel in usable:
        linear = PackedLinear(weight, rows, keep_unpacked=kernel == MKL)

        def trials(linear=linear):
            for _ in range(KERNEL_TRIALS):
                linear(x)

        seconds[kernel] = best_seconds(trials, rounds=1)
    choice = ONEDNN if seconds[ONEDNN] < 0.9 * seconds[MKL] else MKL
    remember(key, choice)
    return choice


KERNEL_TRIALS = 10


def projection_bytes(model: Transformer) -> int:
    """Bytes of the projection weights a forward pass multiplies by, packed or not."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, PackedLinear):
            total += module.nbytes
    return total + quantized_bytes(model)
