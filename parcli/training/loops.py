"""Training loops for the VQ tokenizer and the PAR transformer, which is trained with the very
modules and plan that generate, so the two cannot disagree on the slot layout; checkpoints and
optimizer state are written atomically, also on Ctrl-C, so a run can always resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from parcli.config import GPTConfig
from parcli.errors import SettingError, UserError, at_least_one
from parcli.io.checkpoints import read_checkpoint, save_checkpoint
from parcli.io.tensors import read_safetensors, write_safetensors
from parcli.model import Transformer
from parcli.plan import Plan
from parcli.slots import embed_slots, slot_rotary
from parcli.vq import VQConfig, VQModel, from_pixels

OnStep = Callable[[int, int, float, float], None]
PRECISIONS = ("fp32", "bf16")


class TrainError(UserError, ValueError):
    """Bad training input (shapes, incompatible checkpoints)."""


@dataclass(frozen=True)
class TrainRun:
    """Settings of one training run, shared by the VQ tokenizer and the transformer."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    out_path: Path
    resume: bool = False
    checkpoint_every: int = 200
    device: str = "cpu"
    dataset: str = ""
    command: str | None = None
    warmup: int = 100
    precision: str = "fp32"  # "bf16": the forward pass under bfloat16 autocast, weights fp32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            choices = " or ".join(PRECISIONS)
            raise SettingError("precision", f"must be {choices}, not {self.precision!r}")
        at_least_one(steps=self.steps, batch_size=self.batch_size)
        if not self.lr > 0:
            raise SettingError("lr", f"must be positive, not {self.lr}")


@dataclass(frozen=True)
class TrainResult:
    path: Path
    steps: int
    seconds: float
    final_loss: float


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor * peak` at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def optim_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".optim.safetensors")


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, step: int) -> None:
    """Restore state saved at `step`; a fresh optimizer stays when missing or from another step."""
    if not path.is_file():
        return
    tensors, metadata = read_safetensors(path, "optimizer state")
    if metadata.get("step") != str(step):
        return
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _resume_state(out_path: Path, kind: str) -> tuple[dict, int, float, object]:
    if not out_path.is_file():
        raise TrainError(f"no checkpoint at {out_path} to resume from", "resume")
    state, found, config, metadata = read_checkpoint(out_path)
    if found != kind:
        raise TrainError(f"{out_path} is a {found} checkpoint, not {kind}", "resume")
    step = int(metadata.get("step", 0))
    training = json.loads(metadata.get("training", "{}"))
    return state, step, float(training.get("seconds", 0.0)), config


def _fit(
    kind: str,
    model: torch.nn.Module,
    cfg: object,
    groups: list[dict],
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    run: TrainRun,
    start: int,
    seconds_before: float,
    on_step: OnStep | None,
    record: dict,
    metadata: dict[str, str] | None = None,
) -> TrainResult:
    """Optimise `model` (on run.device) with AdamW over `groups` from step `start` to run.steps,
    writing a `kind` checkpoint (with `record` and `metadata`) every run.checkpoint_every steps,
    at the end and on Ctrl-C; the batches depend on (seed, start) alone."""
    optimizer = torch.optim.AdamW(groups, lr=run.lr, betas=(0.9, 0.95))
    out_path, steps = run.out_path, run.steps
    if run.resume:
        load_optimizer(optimizer, optim_path(out_path), start)
    record = {"batch_size": run.batch_size, "lr": run.lr, "seed": run.seed, **record,
              "precision": run.precision}  # fmt: skip

    def save(step: int, loss: float) -> float:
        """Write the checkpoint of `step`; the run's seconds so far."""
        seconds = seconds_before + time.perf_counter() - began
        final = round(loss, 5) if math.isfinite(loss) else None
        training = {"kind": kind, "dataset": run.dataset, "steps": step,
                    "seconds": round(seconds, 1), "final_loss": final, **record,
                    **({"command": run.command} if run.command else {})}  # fmt: skip
        meta = {"step": str(step), "training": json.dumps(training), **(metadata or {})}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        adamw = {  # the optimizer's state as flat tensors `<param index>.<name>`
            f"{index}.{name}": value
            for index, param_state in optimizer.state_dict()["state"].items()
            for name, value in param_state.items()
            if isinstance(value, torch.Tensor)
        }
        write_safetensors(optim_path(out_path), adamw, {"step": str(step)})
        save_checkpoint(out_path, state, kind, cfg, meta)
        return seconds

    generator = torch.Generator().manual_seed(run.seed * 1_000_003 + start)
    model.train()
    done, loss_value = start, float("nan")
    began = time.perf_counter()
    try:
        for step in range(start, steps):
            tick = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, run.lr, run.warmup)
            bf16 = run.precision == "bf16"
            with torch.autocast(torch.device(run.device).type, torch.bfloat16, enabled=bf16):
                loss = loss_fn(generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            done, loss_value = step + 1, loss.item()
            if run.checkpoint_every and done % run.checkpoint_every == 0 and done < steps:
                save(done, loss_value)
            if on_step is not None:
                rate = run.batch_size / max(time.perf_counter() - tick, 1e-9)
                on_step(done, steps, loss_value, rate)
    except KeyboardInterrupt:
        if done > start:
            save(done, loss_value)
        raise
    return TrainResult(out_path, done, save(done, loss_value), loss_value)


def train_vq(
    images: np.ndarray, cfg: VQConfig, run: TrainRun, on_step: OnStep | None = None
) -> TrainResult:
    """Train a VQ tokenizer: loss = L1 + MSE reconstruction + codebook + commitment."""
    if images.shape[1] % cfg.downsample or images.shape[2] % cfg.downsample:
        raise TrainError(f"image size {images.shape[1:3]} is not divisible by {cfg.downsample}")
    torch.manual_seed(run.seed)
    model = VQModel(cfg)
    start, seconds_before = 0, 0.0
    if run.resume:
        state, start, seconds_before, found = _resume_state(run.out_path, "vq")
        if found != cfg:
            cfg, model = found, VQModel(found)
        model.load_state_dict(state)
    model.to(run.device)
    pixels = torch.from_numpy(images)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(pixels), (run.batch_size,), generator=generator)
        x = from_pixels(pixels[index]).to(run.device)
        recon, losses = model(x)
        return (
            F.l1_loss(recon, x) + F.mse_loss(recon, x) + losses["codebook"] + losses["commitment"]
        )

    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    record = {"images": len(images)}
    return _fit("vq", model, cfg, groups, loss_fn, run, start, seconds_before, on_step, record)


@torch.no_grad()
def encode_images(
    vq: VQModel, images: np.ndarray, batch_size: int = 256, device: str = "cpu"
) -> np.ndarray:
    """uint8 images (..., H, W, C), clips included -> int64 (..., h, w) raster code grids; every
    frame is encoded on its own."""
    vq.eval()
    flat, out = images.reshape(-1, *images.shape[-3:]), []
    for start in range(0, len(flat), batch_size):
        x = from_pixels(torch.from_numpy(flat[start : start + batch_size])).to(device)
        out.append(vq.encode(x.to(vq.post_quant_conv.weight.dtype))[1].cpu())
    codes = torch.cat(out).numpy().astype(np.int64)
    return codes.reshape(*images.shape[:-3], *codes.shape[1:])


def train_gpt(
    codes: np.ndarray,
    labels: np.ndarray,
    cfg: GPTConfig,
    run: TrainRun,
    on_step: OnStep | None = None,
    init_from: str | Path | None = None,
    cfg_scale: float | None = None,
) -> TrainResult:
    """Train a class-conditional PAR transformer on raster code grids (N, *cfg.grid); `cfg_scale`
    is recorded as the checkpoint's default guidance scale."""
    out_path, device, batch_size = run.out_path, run.device, run.batch_size
    plan = Plan(cfg.grid, cfg.regions)
    torch.manual_seed(run.seed)
    model = Transformer(cfg)
    model.init_weights()
    start, seconds_before, origin = 0, 0.0, None
    if run.resume:
        state, start, seconds_before, found = _resume_state(out_path, "gpt")
        if found != cfg:
            raise TrainError(f"{out_path} was trained with a different architecture", "resume")
        model.load_state_dict(state)
    elif init_from is not None:
        state, found_kind, _, _ = read_checkpoint(init_from)
        if found_kind != "gpt":
            raise TrainError(f"{init_from} is not a transformer checkpoint", "init_from")
        own = model.state_dict()  # every tensor whose name and shape match
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        mismatched = sorted(k for k in state if k in own and k not in usable)
        if mismatched:
            raise TrainError(f"shapes differ for {', '.join(mismatched[:3])}", "init_from")
        model.load_state_dict(usable, strict=False)
        origin = str(init_from)
    model.to(device)
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.05},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    seqs = torch.from_numpy(plan.to_sequence(codes.astype(np.int64)))
    targets_labels = torch.from_numpy(labels.astype(np.int64))
    rope = slot_rotary(model, plan)
    mask = torch.from_numpy(plan.attention_mask()).to(device)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(seqs), (batch_size,), generator=generator)
        drop = torch.rand(batch_size, generator=generator) < cfg.class_dropout
        batch_labels = targets_labels[index].masked_fill(drop, cfg.num_classes)  # the null class
        seq = seqs[index].to(device)
        h = embed_slots(model, plan, batch_labels.to(device), seq, 0, plan.num_slots)
        logits = model(h, rope, mask=mask)  # slot s's logits against PAR sequence index s
        return F.cross_entropy(logits.flatten(0, 1), seq[:, : plan.num_slots].flatten())

    record = {"sequences": len(codes), **({"init_from": origin} if origin else {})}
    metadata = {"cfg_scale": str(cfg_scale)} if cfg_scale is not None else None
    args = (run, start, seconds_before, on_step, record, metadata)
    return _fit("gpt", model, cfg, groups, loss_fn, *args)
