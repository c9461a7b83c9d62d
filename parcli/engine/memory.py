"""Will a generation fit? Its memory estimated generously before anything large is allocated."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

from parcli.config import GPTConfig
from parcli.engine.devices import proc_field
from parcli.io.checkpoints import expected_shapes
from parcli.model import cache_dtype, cache_head_dim
from parcli.plan import Plan
from parcli.vq import VQConfig

HEADROOM = 0.9  # of the free memory a run may plan to use
DECODE_BATCH = 16  # images the VQ decodes together (Pipeline.decode's default)


@dataclass(frozen=True)
class Estimate:
    weights: int  # transformer and tokenizer
    cache: int  # KV cache of one batch
    activations: int  # one pass of one batch, and the VQ decoder's
    outputs: int  # every token and pixel of the run, held until written

    @property
    def total(self) -> int:
        return self.weights + self.cache + self.activations + self.outputs


def parameter_count(kind: str, config: GPTConfig | VQConfig) -> int:
    return sum(math.prod(shape) for shape in expected_shapes(kind, config).values())


def estimate(
    gpt: GPTConfig,
    vq: VQConfig,
    dtype: torch.dtype,
    batch: int,
    samples: int,
    guided: bool,
    scale: int = 1,
    device: torch.device | str = "cuda",
) -> Estimate:
    """Bytes a `par generate` of `samples` samples, `batch` at a time, needs at its peak."""
    size = dtype.itemsize
    plan = Plan(gpt.grid, gpt.regions)
    sequences = batch * (2 if guided else 1)
    # Heads as the device's cache stores them.
    heads = gpt.n_head * cache_head_dim(gpt.head_dim, device)
    width = plan.widest_pass
    cached = cache_dtype(dtype, device, width).itemsize
    cache = 2 * gpt.n_layer * sequences * plan.num_slots * heads * cached
    hidden = sequences * width * gpt.dim * 12 * size  # residual, q/k/v, FFN (hidden ~ 2.7 dim)
    scores = sequences * gpt.n_head * width * plan.num_slots * 4
    logits = sequences * width * gpt.vocab_size * 4 * 3  # float32, softmax, sorted for top-p
    rows, cols = gpt.grid[-2:]
    frames = gpt.grid[0] if len(gpt.grid) == 3 else 1
    height, width_px = rows * vq.downsample, cols * vq.downsample
    # The decoder's largest feature map over its resolutions (channels ch x mult at 1/2^k of the
    # image), float32, three of them alive at once (a block's input, output and norm).
    largest = max(
        (height >> k) * (width_px >> k) * vq.ch * mult for k, mult in enumerate(vq.ch_mult)
    )
    decode = min(DECODE_BATCH, samples * frames) * largest * 4 * 3
    pixels = samples * frames * height * width_px * vq.out_channels * scale * scale
    tokens = samples * plan.num_tokens * 8
    weights = parameter_count("gpt", gpt) * size + parameter_count("vq", vq) * 4
    return Estimate(weights, cache, hidden + scores + logits + decode, 2 * pixels + tokens)


def available_bytes(device: torch.device) -> int | None:
    """Free memory of the device (available RAM for the CPU), or None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = proc_field("/proc/meminfo", "MemAvailable:") if device.type == "cpu" else None
    return int(free.split()[0]) * 1024 if free else None


def largest_batch(fits, upper: int) -> int:
    """The largest batch in [1, upper] for which the monotone `fits(batch)` holds (0 if none)."""
    return bisect.bisect_left(range(1, upper + 1), True, key=lambda batch: not fits(batch))


def check_fits(
    gpt: GPTConfig,
    vq: VQConfig,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    samples: int | None,
    guided: bool,
    scale: int = 1,
) -> None:
    """Refuse in one line a run that would not fit in the device's free memory, naming the
    batch size that would. `samples` None: a run that holds one batch of outputs at a time."""
    from parcli.errors import SettingError, UserError
    from parcli.io.hub import human_size

    free = available_bytes(device)
    if free is None:
        return
    budget = free * HEADROOM
    batch = min(batch, samples) if samples is not None else batch

    def need(size: int) -> Estimate:
        return estimate(gpt, vq, dtype, size, samples or size, guided, scale, device)

    wanted = need(batch)
    if wanted.total <= budget:
        return
    where = "this machine's RAM" if device.type == "cpu" else str(device)
    smallest = need(1)
    if smallest.total > budget:
        if samples is not None and smallest.outputs > budget / 2:
            raise SettingError(
                "num_samples", f"{samples} samples hold {human_size(smallest.outputs)} of "
                f"pixels at once, and {where} has {human_size(free)} free; ask for fewer, or "
                "use `par sample`, which writes its images as it goes",
            )  # fmt: skip
        raise UserError(
            f"the model needs about {human_size(smallest.total)} to run "
            f"({human_size(smallest.weights)} of weights), and {where} has "
            f"{human_size(free)} free"
        )
    best = largest_batch(lambda size: need(size).total <= budget, batch)
    parts = (
        f"weights {human_size(wanted.weights)}, KV cache {human_size(wanted.cache)}, "
        f"activations {human_size(wanted.activations)}, outputs {human_size(wanted.outputs)}"
    )
    raise SettingError(
        "batch_size", f"{batch} samples a batch need about {human_size(wanted.total)} "
        f"({parts}), and {where} has {human_size(free)} free; --batch-size {best} fits",
    )  # fmt: skip
