"""The one place that decides how a pipeline runs its passes, and with which speed-ups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from parcli.errors import SettingError

PREFIX, FIXED_SHAPE = "prefix", "fixed-shape"


@dataclass(frozen=True)
class Engine:
    """A runner (`parcli.engine.runners`) and the speed-ups applied around it."""

    runner: str  # PREFIX: attend to the visible cache prefix; FIXED_SHAPE: whole cache, masked
    cuda_graphs: bool = False  # replay each pass width from a captured CUDA graph
    compiled: bool = False  # torch.compile the fixed-shape step
    packed_projections: bool = False  # CPU fp32/bf16: MKL/oneDNN pre-packed weights, w1+w3 fused
    channels_last_vq: bool = False  # VQ decoder convolutions in channels-last layout
    reference_kernels: bool = False  # the plain engine: SDPA's kernels as the reference picks them

    @property
    def fixed_batches(self) -> bool:
        """Whether a new batch size costs a compile or a graph capture: then a short last batch
        is padded to the others' size rather than run at its own."""
        return self.cuda_graphs or self.compiled

    def speedups(self) -> list[str]:
        names = {
            "cuda_graphs": "CUDA graphs",
            "compiled": "torch.compile",
            "packed_projections": "packed projections",
            "channels_last_vq": "channels-last VQ",
        }
        return [label for field, label in names.items() if getattr(self, field)]


def set_cuda_backends() -> None:
    """Said once, here, rather than left to PyTorch's defaults or to whatever else the process
    set: cuDNN times its convolution algorithms for each of the VQ decoder's shapes and keeps the
    fastest, in TF32 (the decoder's pixels stay within a level of the CPU's; `tests/test_cuda.py`
    checks it), while float32 matrix products stay full float32, since the transformer's tokens
    must be float32's."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def default_compile(device: torch.device) -> bool:
    """torch.compile by default on CUDA only, where it fuses the graphed step; on CPU it costs
    minutes of compiling and ran about 3x slower per pass than the eager prefix runner."""
    return device.type == "cuda"


def choose_engine(
    device: torch.device,
    dtype: torch.dtype,
    compile: bool | None = None,
    plain: bool = False,
    quantized: bool = False,
    reference_kernels: bool = False,
) -> Engine:
    """How passes run on `device` in `dtype`; `compile` None takes `default_compile`.

    | device | dtype     | compile | plain | runner      | speed-ups                             |
    |--------|-----------|---------|-------|-------------|---------------------------------------|
    | any    | any       | any     | yes   | fixed shape | none: the yardstick of `par bench     |
    |        |           |         |       |             | --baseline` (LlamaGen's way: masked   |
    |        |           |         |       |             | whole-cache attention, op by op, the  |
    |        |           |         |       |             | cache in the model's dtype and SDPA's |
    |        |           |         |       |             | math kernel after the first pass)     |
    | cuda   | any       | no      | ref.  | fixed shape | CUDA graphs of the plain engine's     |
    |        |           |         |       |             | kernels (compile refused)             |
    | other  | any       | no      | ref.  | fixed shape | none: the plain engine                |
    | cuda   | any       | yes     | no    | fixed shape | CUDA graphs of the compiled step,     |
    |        |           |         |       |             | channels-last VQ                      |
    | cuda   | any       | no      | no    | fixed shape | CUDA graphs, channels-last VQ         |
    | cpu    | any       | yes     | no    | fixed shape | compiled step (Inductor packs its own |
    |        |           |         |       |             | weights), channels-last VQ            |
    | cpu    | fp32/bf16 | no      | no    | prefix      | packed projections, channels-last VQ  |
    | cpu    | fp16      | no      | no    | prefix      | channels-last VQ                      |
    | mps    | any       | no      | no    | prefix      | channels-last VQ                      |

    In float32 every row draws the same tokens from the same weights and seed (the VQ's pixels
    stay within one level). In bf16 each kernel rounds its own way, so the tokens depend on the
    row: on the CPU, the prefix, fixed-shape and compiled steps of tiny random models agreed on
    27 to 72 % of tokens; a CUDA graph replays its eager step exactly; oneDNN's packed and
    unpacked bf16 products drew the same tokens. Packed weights are never compiled: Inductor
    crashes on them. `quantized` (int8 weights, `parcli.engine.quantize`) turns packing off:
    there are no float weights to pack.

    `reference_kernels` ("ref." above; `--reference-kernels`) runs the plain engine's kernels,
    graphed on CUDA (a graph replays the kernels it captured): the reference's tokens in bf16
    too. A compiled step fuses attention its own way, so the two refuse each other.
    """
    if plain:
        return Engine(FIXED_SHAPE, reference_kernels=True)
    on_cuda = device.type == "cuda"
    if reference_kernels:
        if compile:
            raise SettingError(
                "compile",
                "a compiled step fuses attention its own way, not the reference's; "
                "leave out --compile with --reference-kernels",
            )
        return Engine(FIXED_SHAPE, cuda_graphs=on_cuda, reference_kernels=True)
    compiled = default_compile(device) if compile is None else compile
    if compiled or on_cuda:
        return Engine(
            FIXED_SHAPE,
            cuda_graphs=on_cuda,
            compiled=compiled,
            channels_last_vq=True,
        )
    return Engine(
        PREFIX,
        packed_projections=device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and not quantized,
        channels_last_vq=True,
    )
