"""The one place that decides how a pipeline runs its passes, and with which speed-ups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # options imports this module when it resolves: no cycle at run time
    from parcli.options import RunOptions

PREFIX, FIXED_SHAPE = "prefix", "fixed-shape"
SPEEDUPS = {  # Engine's fields, as `par bench` names them
    "cuda_graphs": "CUDA graphs",
    "compiled": "torch.compile",
    "packed_projections": "packed projections",
    "channels_last_vq": "channels-last VQ",
}


@dataclass(frozen=True)
class Engine:
    """A runner (`parcli.engine.runners`) and the speed-ups applied around it."""

    runner: str  # PREFIX: attend to the visible cache prefix; FIXED_SHAPE: whole cache, masked
    cuda_graphs: bool = False  # replay each pass width from a captured CUDA graph
    compiled: bool = False  # torch.compile the fixed-shape step
    packed_projections: bool = False  # CPU fp32/bf16: oneDNN pre-packed weights, w1+w3 fused
    channels_last_vq: bool = False  # VQ decoder convolutions in channels-last layout
    reference_kernels: bool = False  # the plain engine: SDPA's kernels as the reference picks them

    def speedups(self) -> list[str]:
        return [label for field, label in SPEEDUPS.items() if getattr(self, field)]


def set_cuda_backends() -> None:
    """Said once, here: cuDNN picks the VQ decoder's fastest convolutions, in TF32 (its pixels stay
    within a level), while float32 matrix products stay full float32, as the tokens must."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def default_compile(device: torch.device) -> bool:
    """On CUDA only: on the CPU compiling takes minutes and runs slower than the prefix runner."""
    return device.type == "cuda"


def choose_engine(
    device: torch.device, dtype: torch.dtype, options: RunOptions, plain: bool = False
) -> Engine:
    """How passes run on `device` in `dtype`; `plain` (`--baseline`) has no speed-up. Never
    compiled with the reference's kernels (`RunOptions.check` refuses that) or packed projections
    (Inductor crashes on them)."""
    if plain:
        return Engine(FIXED_SHAPE, reference_kernels=True)
    on_cuda = device.type == "cuda"
    if options.reference_kernels:
        return Engine(FIXED_SHAPE, cuda_graphs=on_cuda, reference_kernels=True)
    compiled = default_compile(device) if options.compile is None else options.compile
    if compiled or on_cuda:
        return Engine(FIXED_SHAPE, cuda_graphs=on_cuda, compiled=compiled, channels_last_vq=True)
    packed = device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
    return Engine(PREFIX, packed_projections=packed and not options.quantize, channels_last_vq=True)
