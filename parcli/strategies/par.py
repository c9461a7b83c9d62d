"""The decode loop: walk a plan pass by pass (a runner runs each one), sampling on the device."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from parcli.engine.runners import PrefixRunner, Runner
from parcli.errors import SettingError
from parcli.model import Transformer
from parcli.plan import Pass, Plan
from parcli.sampling import SamplingConfig, image_uniforms, mix_guidance, sample
from parcli.slots import embed_slots, guided_labels


@dataclass
class DecodeStats:
    """What a strategy spent, summed over the images it made."""

    images: int = 0
    passes: int = 0  # forward passes, counted once per image that took part in them
    query_tokens: int = 0  # tokens fed to the transformer, per image summed
    iterations: int = 0  # strategy steps (one forward pass each), per image summed
    committed_passes: int = 0  # plan passes made final, per image summed

    def add(self, other: DecodeStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def per_image(self) -> dict[str, float]:
        images = max(self.images, 1)
        return {
            "passes_per_image": self.passes / images,
            "query_tokens_per_image": self.query_tokens / images,
            "passes_per_iteration": self.committed_passes / max(self.iterations, 1),
        }


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
    """Token grids (batch, *plan.grid) in raster order, drawn with each image's `uniforms` in PAR
    order; nothing here waits for the device: sampling, guidance and scattering stay on it."""
    cfg = model.cfg
    device = labels.device
    sequence_labels = guided_labels(labels, cfg.num_classes, sampling.guided)
    sequences = sequence_labels.shape[0]
    if runner is None:
        runner = PrefixRunner(model, plan, sequences)
    seq = torch.zeros(sequences, plan.num_tokens, dtype=torch.long, device=device)
    if on_pass is not None and device.type == "cuda":
        on_pass = DeviceProgress(on_pass, device)
    for step in plan.passes:
        h = embed_slots(model, plan, sequence_labels, seq, step.start, step.end)
        logits = runner(step, h)
        if sampling.guided:
            logits = mix_guidance(logits, sampling.cfg_scale)
        tokens = sample(logits, sampling, uniforms[:, step.start : step.end])
        seq[:, step.start : step.end] = tokens.repeat(sequences // tokens.shape[0], 1)
        if on_pass is not None:
            on_pass(step)
    if isinstance(on_pass, DeviceProgress):
        on_pass.flush()
    inverse = device_inverse(plan, device)
    return seq[: labels.shape[0], inverse].reshape(labels.shape[0], *plan.grid)


@functools.lru_cache(maxsize=64)
def device_inverse(plan: Plan, device: torch.device) -> torch.Tensor:
    """The plan's raster-from-PAR index copied to `device` once: per batch, the host would wait."""
    return torch.from_numpy(plan.inverse).to(device)


class DeviceProgress:
    """Reports a CUDA pass when the device has run it, not when the host queued it: past `ahead`
    unreported passes the host waits on the oldest's event, which keeps the queue full."""

    def __init__(self, report: Callable[[Pass], None], device: torch.device, ahead: int = 8):
        self.report, self.ahead = report, ahead
        self.stream = torch.cuda.current_stream(device)
        self.queued: deque[tuple[torch.cuda.Event, Pass]] = deque()

    def __call__(self, step: Pass) -> None:
        event = torch.cuda.Event()
        event.record(self.stream)
        self.queued.append((event, step))
        self.flush(self.ahead)

    def flush(self, keep: int = 0) -> None:
        """Report the passes the device has run, waiting on the oldest while over `keep` wait."""
        while self.queued and (len(self.queued) > keep or self.queued[0][0].query()):
            event, step = self.queued.popleft()
            event.synchronize()
            self.report(step)


class Par:
    """PAR's own walk: one forward pass per plan pass, each token drawn with its image's uniform."""

    name = "par"
    window = 1  # plan passes per forward pass

    def __init__(self, options):
        if options.window not in (None, 1):
            message = f"is 1 for --strategy par (one pass at a time), not {options.window}"
            raise SettingError("window", message)

    def generate(self, model, plan, labels, sampling, seed, indices, runner, on_pass=None):
        """Token grids (batch, *plan.grid) in raster order, and what they cost."""
        uniforms = image_uniforms(seed, indices, plan.num_tokens, labels.device)
        tokens = generate_tokens(model, plan, labels, sampling, uniforms, on_pass, runner)
        count, passes = labels.shape[0], labels.shape[0] * plan.num_passes
        # One forward pass per plan pass: images, passes, query tokens, iterations, committed.
        stats = DecodeStats(count, passes, count * plan.num_tokens, passes, passes)
        return tokens, stats
