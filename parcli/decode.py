"""The decode loop: walk a plan pass by pass, sample, and return token grids in raster order.

How each pass runs the transformer is up to a runner (`parcli.engine.runners`), which owns the
KV cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from parcli.engine.runners import PrefixRunner, Runner
from parcli.model import Transformer
from parcli.plan import Pass, Plan
from parcli.sampling import SamplingConfig, mix_guidance, sample
from parcli.slots import embed_slots, guided_labels


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    plan: Plan,
    labels: torch.Tensor,
    sampling: SamplingConfig,
    uniforms: torch.Tensor,
    on_pass: Callable[[Pass], None] | None = None,
    runner: Runner | None = None,
) -> torch.Tensor:
    """Generate one token grid per label: (batch, *plan.grid) int64 in raster order.

    `uniforms` (batch, plan.num_tokens) are each image's random numbers (see
    `parcli.sampling.image_uniforms`), one per token in PAR order. Without a runner, each pass
    runs plainly over the visible cache prefix. Nothing here waits for the device: sampling,
    guidance and scattering stay on it.
    """
    cfg = model.cfg
    device = labels.device
    sequence_labels = guided_labels(labels, cfg.num_classes, sampling.guided)
    sequences = sequence_labels.shape[0]
    if runner is None:
        runner = PrefixRunner(model, plan, sequences)
    if runner.sequences != sequences:
        raise ValueError(f"the runner was built for {runner.sequences} sequences, not {sequences}")
    seq = torch.zeros(sequences, plan.num_tokens, dtype=torch.long, device=device)
    for step in plan.passes:
        h = embed_slots(model, plan, sequence_labels, seq, step.start, step.end)
        logits = runner(step, h)
        if sampling.guided:
            logits = mix_guidance(logits, sampling.cfg_scale)
        tokens = sample(logits, sampling, uniforms[:, step.start : step.end])
        seq[:, step.start : step.end] = tokens.repeat(sequences // tokens.shape[0], 1)
        if on_pass is not None:
            on_pass(step)
    inverse = device_inverse(plan, device)
    return seq[: labels.shape[0], inverse].reshape(labels.shape[0], *plan.grid)


@functools.lru_cache(maxsize=64)
def device_inverse(plan: Plan, device: torch.device) -> torch.Tensor:
    """The plan's raster-from-PAR index on `device`, copied there once (a host-to-device copy
    per batch would make the host wait for the device)."""
    return torch.from_numpy(plan.inverse).to(device)
