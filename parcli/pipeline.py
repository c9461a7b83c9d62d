"""From loaded weights to pixels: one object that `generate`, `bench` and `eval` all drive."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from parcli.config import GPTConfig
from parcli.engine.memory import check_fits
from parcli.engine.packing import pack_projections
from parcli.engine.policy import FIXED_SHAPE, choose_engine, set_cuda_backends
from parcli.engine.quantize import choose_products, products_to_time, quantize_int8
from parcli.engine.runners import FixedShapeRunner, PrefixRunner, Runner
from parcli.engine.threads import use_threads
from parcli.errors import UserError, at_least_one
from parcli.io.locate import ModelFiles
from parcli.model import Transformer
from parcli.options import SAMPLING_FIELDS, RunOptions
from parcli.plan import Pass, Plan
from parcli.sampling import SamplingConfig
from parcli.slots import guided_labels
from parcli.strategies import make_strategy
from parcli.strategies.par import DecodeStats
from parcli.vq import VQConfig, VQModel, to_pixels


class PipelineError(UserError):
    """A request the loaded models cannot serve."""


@dataclass(eq=False)
class Pipeline:
    """A transformer, its tokenizer, the plan for its regions and the strategy that walks it;
    `defaults` are the model's own sampling settings, `plain_engine` (no speed-ups) the yardstick
    of `par bench --baseline`."""

    model: Transformer
    vq: VQModel
    name: str = "model"
    defaults: SamplingConfig = SamplingConfig()
    options: RunOptions = RunOptions()
    plain_engine: bool = False

    def __post_init__(self) -> None:
        cfg = self.model.cfg
        codebook = self.vq.config.codebook_size
        if codebook != cfg.vocab_size:
            raise PipelineError(
                f"the tokenizer's codebook has {codebook} codes but {self.name} predicts "
                f"{cfg.vocab_size}; pass the tokenizer this model was trained with",
                setting="tokenizer",
            )
        self.options.check()
        self.plan = Plan(cfg.grid, cfg.regions)
        self.strategy = make_strategy(self.options)
        self.stats = DecodeStats()
        if self.options.quantize is not None:
            quantize_int8(self.model)
        self.engine = choose_engine(self.device, self.model.dtype, self.options, self.plain_engine)
        if self.device.type == "cuda":
            set_cuda_backends()
        self._runners: dict[int, Runner] = {}
        self.packed: str | None = None  # the kernel that packed the projections, once packed
        if self.engine.channels_last_vq:
            self.vq.to(memory_format=torch.channels_last)

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

    def sampling(self, cfg_scale: float | None = None) -> SamplingConfig:
        """The options' sampling, the model's own where they give none; `cfg_scale` over both."""
        given = {name: getattr(self.options, name) for name in SAMPLING_FIELDS}
        sampling = replace(self.defaults, **{k: v for k, v in given.items() if v is not None})
        return sampling if cfg_scale is None else replace(sampling, cfg_scale=cfg_scale)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's uint8 pixels (every frame of a clip)."""
        *frames, rows, cols = self.plan.grid
        side = self.vq.config.downsample
        return math.prod(frames) * rows * side * cols * side * self.vq.config.out_channels

    def passes_per_image(self) -> float:
        """Forward passes per image so far (the plan's, before any): a strategy may take fewer."""
        if not self.stats.images:
            return float(self.plan.num_passes)
        return self.stats.per_image()["passes_per_image"]

    def run_options(self, sampling: SamplingConfig | None = None) -> RunOptions:
        """The options as this pipeline runs them, every sampling setting decided."""
        options = replace(self.options, compile=self.engine.compiled, window=self.strategy.window)
        return replace(options, **asdict(sampling or self.sampling()))

    def check_regions(self, regions: int | None) -> None:
        trained = self.model.cfg.regions
        if regions is not None and regions != trained:
            raise PipelineError(
                f"{self.name} was trained for {trained} region(s), not {regions}; "
                f"use {trained}, or a checkpoint trained for {regions}",
                setting="regions",
            )

    def times_kernels_first(self) -> bool:
        """Whether the first batch will time int8 products on this machine before its first
        pass (seconds, once per machine and thread count)."""
        return (
            self.options.quantize is not None and not self._runners and products_to_time(self.model)
        )

    def runner(self, sequences: int) -> Runner:
        """The runner of `sequences` rows, kept so that later batches reuse its cache and graphs."""
        engine = self.engine
        if sequences in self._runners:
            return self._runners[sequences]
        if self.options.quantize is not None and not self._runners:
            choose_products(self.model)  # here, once the run's thread count is set
        if engine.runner == FIXED_SHAPE:
            flags = (engine.cuda_graphs, engine.compiled, engine.reference_kernels)
            runner = FixedShapeRunner(self.model, self.plan, sequences, *flags)
        else:
            if engine.packed_projections and not self.packed:
                # Packed once, for the inputs of the first batch's widest passes; other batch
                # sizes multiply by the unpacked weight (or by oneDNN's in-place packing).
                self.packed = pack_projections(self.model, sequences * self.plan.widest_pass)
            runner = PrefixRunner(self.model, self.plan, sequences)
        self._runners[sequences] = runner
        return runner

    def plain_engine_twin(self) -> Pipeline:
        """The same transformer weights (shared, not copied), run by the plain engine; made
        before this pipeline packs anything, as packing swaps modules, never tensors."""
        if self.packed:
            raise PipelineError("a plain-engine twin must be made before the weights are packed")
        if self.options.quantize is not None:
            raise PipelineError(
                "the plain engine runs float weights; compare it without --quantize",
                setting="quantize",
            )
        with torch.device("meta"):
            model = Transformer(self.model.cfg)
        model.load_state_dict(self.model.state_dict(), assign=True)
        vq = copy.deepcopy(self.vq).to(memory_format=torch.contiguous_format)
        options = replace(self.options, compile=False, reference_kernels=False, strategy="par",
                          window=1)  # fmt: skip
        return Pipeline(model.eval(), vq, self.name, self.defaults, options, plain_engine=True)

    def generate(
        self,
        labels: Sequence[int],
        sampling: SamplingConfig,
        seed: int,
        batch_size: int,
        on_pass: Callable[[Pass], None] | None = None,
        indices: Sequence[int] | None = None,
        on_batch: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Token grids (len(labels), *grid) in raster order; label k is image `indices[k]` of the
        run seeded `seed`, its tokens set by that pair alone; `on_batch` hears of each batch."""
        self.check_labels(labels)
        at_least_one(batch_size=batch_size)
        indices = range(len(labels)) if indices is None else indices
        # A new batch size would cost a compile or a graph capture: a short last batch is padded.
        fixed = self.engine.cuda_graphs or self.engine.compiled
        pad_short_batches = fixed and len(labels) > batch_size
        chunks = []
        for start in range(0, len(labels), batch_size):
            chunk_labels = list(labels[start : start + batch_size])
            batch_indices = list(indices[start : start + batch_size])
            real = len(chunk_labels)
            if pad_short_batches and real < batch_size:
                # Rows that repeat the last image, generated and dropped: no new shapes.
                chunk_labels += chunk_labels[-1:] * (batch_size - real)
                batch_indices += batch_indices[-1:] * (batch_size - real)
            chunk = torch.tensor(chunk_labels, device=self.device)
            sequences = guided_labels(chunk, self.model.cfg.num_classes, sampling.guided).shape[0]
            runner = self.runner(sequences)
            tokens, stats = self.strategy.generate(
                self.model, self.plan, chunk, sampling, seed, batch_indices, runner, on_pass
            )
            self.stats.add(stats)
            chunks.append(tokens[:real])
            if on_batch is not None:
                on_batch(start, chunks[-1])
        return torch.cat(chunks)

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, batch_size: int = 16, size: int | None = None
    ) -> np.ndarray:
        """uint8 pixels: (N, H, W, C) for images, (N, T, H, W, C) for videos; with `size`,
        frames are resized bicubically before rounding, as the reference FID samplers do."""
        grid = self.plan.grid
        flat = tokens.reshape(-1, *grid[-2:]).to(self.device)
        frames = []
        for chunk in flat.split(batch_size):
            images = self.vq.decode_codes(chunk).float()
            if size is not None and images.shape[-2:] != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bicubic")
            frames.append(to_pixels(images).cpu())
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
    defaults: SamplingConfig | None = None,
    options: RunOptions | None = None,
) -> Pipeline:
    """The pipeline of two converted files; `defaults` None: those the checkpoint records."""
    from parcli.io.checkpoints import load_transformer, load_vq

    model, metadata = load_transformer(checkpoint, device, dtype)
    # The reference decodes in float32; pixels stay within a level of it that way on every device.
    vq, _ = load_vq(tokenizer, device, torch.float32)
    if defaults is None:
        defaults = recorded_sampling(checkpoint, metadata)
    return Pipeline(model, vq, name or checkpoint.name, defaults, options or RunOptions())


def open_pipeline(
    files: ModelFiles,
    options: RunOptions,
    regions: int | None = None,
    batch: int | None = None,
    count: int | None = None,
    scale: int = 1,
) -> Pipeline:
    """The pipeline of located files, checked to be trained for `regions` (None: any); with
    `batch`, a run of `count` samples enlarged `scale` times is checked to fit before loading."""
    if batch is not None:  # from the headers; a bad one is left to loading, which explains it
        from parcli.io.checkpoints import read_config

        gpt, vq = read_config(files.checkpoint)[1], read_config(files.tokenizer)[1]
        guided = options.cfg_scale is None or options.cfg_scale > 1
        if isinstance(gpt, GPTConfig) and isinstance(vq, VQConfig):
            check_fits(gpt, vq, options.torch_device, options.torch_dtype, batch, count, guided,
                       scale)  # fmt: skip
    pipe = load_pipeline(
        files.checkpoint, files.tokenizer, options.torch_device, options.torch_dtype, files.name,
        files.defaults, options,
    )  # fmt: skip
    if files.regions is not None and files.regions != pipe.model.cfg.regions:
        # A catalogue entry that names the wrong file would run under the wrong name.
        raise PipelineError(
            f"{files.name}: the catalogue says {files.regions} region(s), but "
            f"{files.checkpoint} was trained for {pipe.model.cfg.regions}; correct the entry"
        )
    pipe.check_regions(regions)
    use_threads(pipe.model, options.threads)
    return pipe


def recorded_sampling(checkpoint: Path, metadata: dict[str, str]) -> SamplingConfig:
    """The sampling defaults a checkpoint's metadata records, each checked; guidance off if none."""
    settings: dict[str, float | int] = {"cfg_scale": 1.0}
    for name in SAMPLING_FIELDS:
        text = metadata.get(name)
        if text is None:
            continue
        try:
            value = float(text)
            if name == "top_k" and value != int(value):
                raise ValueError(text)
            settings[name] = int(value) if name == "top_k" else value
            SamplingConfig(**{name: settings[name]})
        except (ValueError, OverflowError):
            raise PipelineError(
                f"{checkpoint} records {name} {text[:20]!r}, which is out of range; "
                "convert the file again"
            ) from None
    return SamplingConfig(**settings)
