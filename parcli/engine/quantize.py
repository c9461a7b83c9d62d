"""Weight-only int8: every transformer projection's weight as int8 with one scale per output
channel, as gpt-fast does; embeddings, norms and the VQ stay as they are.

A pass at small batch reads every weight once, so a quarter of float32's bytes is most of the
speed-up. On the CPU the product runs through `torch._weight_int8pack_mm` with bfloat16
activations: its float32 path is a slow reference loop (6x slower than float32 here), its
bfloat16 one 3 to 4x faster than MKL's packed float32 product at 2 to 8 rows on an AVX512-BF16
CPU. Where the kernel is missing, the weight is widened per product instead (correct, not fast).

Opt-in only: the tokens differ from float32's (the weights are rounded, and on the CPU the
projections' inputs too), so `--quantize int8` never replaces the exact default.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATIONS = ("int8",)
# What the projections' inputs are rounded to: CUDA runs the model in bf16 already, and on the
# CPU bf16 is the kernel's fast path.
ACTIVATION_DTYPE = torch.bfloat16


class Int8Linear(nn.Module):
    """A bias-free projection with an int8 weight and a scale per output channel."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("scales", scales)
        self.fused = _kernel_runs(weight.device, ACTIVATION_DTYPE)
        self.register_buffer("kernel_scales", scales.to(ACTIVATION_DTYPE), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(ACTIVATION_DTYPE)
        if self.fused:
            out = torch._weight_int8pack_mm(rows, self.weight_int8, self.kernel_scales)
        else:
            weight = self.weight_int8.to(ACTIVATION_DTYPE) * self.kernel_scales[:, None]
            out = F.linear(rows, weight)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


@cache
def _kernel_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this build has the fused int8 product for `device` and `dtype` (probed once)."""
    try:
        x = torch.ones(1, 64, device=device, dtype=dtype)
        w = torch.ones(8, 64, device=device, dtype=torch.int8)
        s = torch.ones(8, device=device, dtype=dtype)
        return bool(torch._weight_int8pack_mm(x, w, s).isfinite().all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def quantize_int8(model: nn.Module) -> nn.Module:
    """Swap every `nn.Linear` of the transformer (attention, feed-forward, output head) for an
    `Int8Linear`, in place; returns the model."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                if child.bias is not None:
                    raise ValueError(f"{name} has a bias; only bias-free projections quantize")
                setattr(module, name, Int8Linear(child.weight))
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes a pass reads from the quantized projections (int8 weights and their scales)."""
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.weight_int8.numel() + module.scales.numel() * 4
    return total
