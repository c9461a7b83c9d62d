"""CPU projections pre-packed by oneDNN for a pass's row count: `F.linear`'s products, faster.
Not MKL's, which round a row differently with the rows beside it (images would move with batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from parcli.engine.quantize import Int8Linear, swap_linears
from parcli.model import FeedForward, Transformer


class PackedLinear(nn.Module):
    """A bias-free projection with its weight packed in place for `input_rows`-row inputs."""

    def __init__(self, weight: torch.Tensor, input_rows: int):
        super().__init__()
        weight = weight.detach()
        self.input_rows = input_rows
        self.nbytes = weight.nbytes  # what a product reads
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, input_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() == 1:
            # One row takes a matrix-vector kernel that rounds otherwise than the matrix kernel
            # of every other row count: run it as two rows, so an image never depends on its batch.
            return self._product(torch.cat([x, x], dim=-2)).narrow(-2, 0, 1)
        return self._product(x)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


class PackedFeedForward(nn.Module):
    """`parcli.model.FeedForward` with w1 and w3 as one packed product, and w2 packed."""

    def __init__(self, plain: FeedForward, input_rows: int):
        super().__init__()
        gate_and_up = torch.cat([plain.w1.weight, plain.w3.weight])
        self.w13 = PackedLinear(gate_and_up, input_rows)
        self.w2 = PackedLinear(plain.w2.weight, input_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has oneDNN's packing ops for `dtype`."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and ops._is_mkldnn_bf16_supported())


ONEDNN = "oneDNN"


def pack_projections(model: Transformer, input_rows: int) -> str | None:
    """Pack a CPU model's projections in place; the kernel's name, or None where it cannot pack."""
    dtype = next(m.weight for m in model.modules() if isinstance(m, nn.Linear)).dtype
    if not packing_available(dtype):
        return None
    for block in model.layers:
        block.feed_forward = PackedFeedForward(block.feed_forward, input_rows)
    swap_linears(model, lambda linear: PackedLinear(linear.weight, input_rows))
    return ONEDNN


def projection_bytes(model: Transformer) -> int:
    """Bytes of the projection weights a forward pass multiplies by: plain, packed or int8."""
    kinds = (nn.Linear, PackedLinear, Int8Linear)
    modules = [m for m in model.modules() if isinstance(m, kinds)]
    return sum(m.weight.nbytes if isinstance(m, nn.Linear) else m.nbytes for m in modules)
