"""From loaded weights to pixels: one object that `generate`, `bench` and `eval` all drive."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parcli.generate import EagerSteps, StaticSteps, Steps, generate_tokens, guided_labels
from parcli.model import Transformer
from parcli.plan import Pass, Plan
from parcli.sampling import SamplingConfig
from parcli.vq import VQModel, to_pixels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PipelineError(Exception):
    """A request the loaded models cannot serve; the message is one line meant for the user."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PipelineError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError("CUDA was asked for but no GPU is visible; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise PipelineError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_compile(flag: bool | None, device: torch.device) -> bool:
    """`--compile/--no-compile`, by default on for CUDA only (where it fuses the graphed step)."""
    return device.type == "cuda" if flag is None else flag


def available_memory() -> int | None:
    """Bytes the kernel says new allocations can still get (Linux); None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def emulated_dtype_note(device: torch.device, dtype: torch.dtype) -> str | None:
    """A one-line warning when this CPU has no native arithmetic for a half-precision dtype."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    cpu = torch.cpu

    def has(feature: str) -> bool:
        return bool(getattr(cpu, f"_is_{feature}_supported", lambda: False)())

    if dtype == torch.bfloat16:
        native, needs = has("avx512_bf16") or has("amx_tile"), "AVX512-BF16 or AMX"
    else:
        native, needs = has("amx_fp16"), "AMX-FP16"
    if native:
        return None
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    return (
        f"this CPU lacks {needs}, so {name} arithmetic is emulated and usually slower than "
        "fp32 here; --dtype fp32 is the fast choice on it"
    )


@dataclass
class Pipeline:
    """A transformer, the tokenizer that decodes its tokens, and the plan for its regions."""

    model: Transformer
    vq: VQModel
    name: str = "model"
    default_cfg_scale: float = 1.0
    compile_model: bool = False
    # No speed-ups at all, the yardstick of `par bench --baseline`: plain products, attention
    # over the whole cache under a mask (as LlamaGen's decode loop does), contiguous VQ convs.
    plain: bool = False

    def __post_init__(self) -> None:
        cfg = self.model.cfg
        codebook = self.vq.config.codebook_size
        if codebook != cfg.vocab_size:
            raise PipelineError(
                f"the tokenizer's codebook has {codebook} codes but {self.name} predicts "
                f"{cfg.vocab_size}; pass the tokenizer this model was trained with (--tokenizer)"
            )
        self.plan = Plan(cfg.grid, cfg.regions)
        self._steps: dict[int, Steps] = {}
        self.packed = False
        if self.plain:
            return
        # Channels-last convolutions: 13-17 % faster decoding on CPU, faster on GPUs too; pixels
        # stay within one level of the contiguous layout.
        self.vq.set_memory_format(torch.channels_last)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def is_video(self) -> bool:
        return len(self.plan.grid) == 3

    def check_labels(self, labels: Sequence[int]) -> None:
        classes = self.model.cfg.num_classes
        for label in labels:
            if not 0 <= label < classes:
                raise PipelineError(
                    f"class {label} is out of range: {self.name} knows classes 0 to {classes - 1}"
                )

    def check_regions(self, regions: int | None) -> None:
        trained = self.model.cfg.regions
        if regions is not None and regions != trained:
            raise PipelineError(
                f"{self.name} was trained for {trained} region(s), not {regions}; "
                f"use --regions {trained} or a checkpoint trained for {regions}"
            )

    def steps(self, rows: int) -> Steps:
        """Decode state for `rows` sequences, kept so later batches reuse its cache and graphs.

        On CPU, eager prefix attention with weights pre-packed for this batch's passes; on
        CUDA, fixed shapes replayed from graphs; for a plain pipeline, fixed shapes op by op.
        """
        if rows not in self._steps:
            on_cuda = self.device.type == "cuda"
            if self.plain:
                self._steps[rows] = StaticSteps(self.model, self.plan, rows)
            elif on_cuda or self.compile_model:
                if self.packed:
                    raise PipelineError("weights packed for eager CPU decoding cannot be compiled")
                self._steps[rows] = StaticSteps(
                    self.model, self.plan, rows, on_cuda, compile_model=self.compile_model
                )
            else:
                self._pack_weights(rows * self.model.cfg.regions)
                self._steps[rows] = EagerSteps(self.model, self.plan, rows)
        return self._steps[rows]

    def plain_twin(self) -> Pipeline:
        """The same transformer weights (shared, not copied) with every speed-up off.

        Built before this pipeline packs anything: packing swaps modules, never tensors.
        """
        if self.packed:
            raise PipelineError("a plain twin must be made before the weights are packed")
        with torch.device("meta"):
            model = Transformer(self.model.cfg)
        model.load_state_dict(self.model.state_dict(), assign=True)
        vq = copy.deepcopy(self.vq).set_memory_format(torch.contiguous_format)
        return Pipeline(model.eval(), vq, self.name, self.default_cfg_scale, plain=True)

    def _pack_weights(self, pass_rows: int) -> None:
        """Pre-pack the projections once, for eager CPU passes of `pass_rows` input rows (the
        first batch size decides; others take the plain product). Inductor packs its own."""
        if self.packed or self.device.type != "cpu":
            return
        # MKL's packing (the faster one) keeps a second copy of every projection: take it only
        # while that copy fits twice over in the memory still free.
        spare = available_memory()
        keep_plain = spare is None or 2 * self.model.projection_bytes() < spare
        self.packed = self.model.pack_weights_for_cpu(pass_rows, keep_plain=keep_plain)

    def generate(
        self,
        labels: Sequence[int],
        sampling: SamplingConfig,
        seed: int,
        batch_size: int,
        on_pass: Callable[[Pass], None] | None = None,
    ) -> torch.Tensor:
        """Token grids (len(labels), *grid) in raster order, generated batch by batch."""
        self.check_labels(labels)
        generator = torch.Generator(self.device).manual_seed(seed)
        all_labels = torch.tensor(list(labels), dtype=torch.long, device=self.device)
        chunks = []
        for chunk in all_labels.split(batch_size):
            rows = guided_labels(chunk, self.model.cfg.num_classes, sampling.guided).shape[0]
            steps = self.steps(rows)
            chunks.append(
                generate_tokens(self.model, self.plan, chunk, sampling, generator, on_pass, steps)
            )
        return torch.cat(chunks)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, batch_size: int = 16) -> np.ndarray:
        """uint8 pixels: (N, H, W, C) for images, (N, T, H, W, C) for videos."""
        grid = self.plan.grid
        flat = tokens.reshape(-1, *grid[-2:]).to(self.device)
        frames = [
            to_pixels(self.vq.decode_codes(chunk).float()).cpu() for chunk in flat.split(batch_size)
        ]
        pixels = torch.cat(frames).numpy()
        return pixels.reshape(
            *tokens.shape[: tokens.dim() - len(grid)], *grid[:-2], *pixels.shape[1:]
        )


def load_pipeline(
    checkpoint: Path,
    tokenizer: Path,
    device: torch.device,
    dtype: torch.dtype,
    name: str | None = None,
    default_cfg_scale: float | None = None,
) -> Pipeline:
    from parcli.weights import load_transformer, load_vq

    model, metadata = load_transformer(checkpoint, device, dtype)
    # The reference decodes in float32; pixels stay within a level of it that way on every device.
    vq, _ = load_vq(tokenizer, device, torch.float32)
    if default_cfg_scale is None:
        default_cfg_scale = float(metadata.get("cfg_scale", 1.0))
    return Pipeline(model, vq, name or checkpoint.name, default_cfg_scale)
