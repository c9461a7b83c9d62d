"""VQ image tokenizer, LlamaGen's ``vq_ds16_c2i`` or a small one trained here, with exactly a
LlamaGen checkpoint's state-dict keys. Images are float (B, C, H, W) in nominal [-1, 1]."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parcli.config import check_config_data
from parcli.errors import SettingError


@dataclass(frozen=True)
class VQConfig:
    """Architecture and quantizer hyper-parameters. Defaults are LlamaGen's ds16."""

    codebook_size: int = 16384
    codebook_dim: int = 8
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dropout: float = 0.0
    l2_norm: bool = True
    commit_beta: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise SettingError("ch_mult", f"must be positive integers, not {self.ch_mult}")
        for positive in ("codebook_size", "codebook_dim", "z_channels", "ch", "num_res_blocks"):
            if getattr(self, positive) < 1:
                raise SettingError(positive, f"must be >= 1, not {getattr(self, positive)}")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % self.norm_groups]
        if bad:
            message = f"{self.norm_groups} GroupNorm groups must divide every width, not {bad}"
            raise SettingError("norm_groups", message)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ch_mult"] = list(self.ch_mult)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQConfig:
        """The config a file declares, every field checked before anything is built from it."""
        # Each field's type is its default's; ch_mult is a list of integers.
        kinds = {f.name: "ints" if f.name == "ch_mult" else type(f.default) for f in fields(cls)}
        known = check_config_data(data, kinds)
        if known.get("norm_eps", 1) <= 0:
            raise ValueError("norm_eps must be positive")
        return cls(**known)


def most_norm_groups(widths: list[int]) -> int:
    """The most GroupNorm groups (32 at most, as LlamaGen) that divide every width."""
    return max(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths))


def _norm(channels: int, cfg: VQConfig) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps, affine=True)


class ResBlock(nn.Module):
    """Pre-norm residual block; a 1x1 ``nin_shortcut`` matches widths when they change."""

    def __init__(self, in_ch: int, out_ch: int, cfg: VQConfig) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, cfg)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual."""

    def __init__(self, channels: int, cfg: VQConfig) -> None:
        super().__init__()
        self.norm = _norm(channels, cfg)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        # (B, C, H, W) -> (B, HW, C) token sequences.
        q, k, v = (conv(normed).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        weights = torch.softmax(q @ k.transpose(1, 2) * c**-0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Resample(nn.Module):
    """Halve the resolution (pad right and bottom, stride-2 conv) or, `up`, double it."""

    def __init__(self, channels: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=int(up))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """ResBlocks, each then attention if any, and a resampler under its checkpoint key."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        depth: int,
        with_attn: bool,
        resample: str | None,
        cfg: VQConfig,
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, cfg) for i in range(depth)
        )
        self.attn = nn.ModuleList(AttnBlock(out_ch, cfg) for _ in range(depth if with_attn else 0))
        self._resample = resample
        if resample is not None:
            self.add_module(resample, Resample(out_ch, up=resample == "upsample"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x if self._resample is None else getattr(self, self._resample)(x)


class Coder(nn.Module):
    """The encoder or, `up`, the decoder, its modules built in LlamaGen's order."""

    def __init__(self, cfg: VQConfig, up: bool) -> None:
        super().__init__()
        self.up = up
        widths = [cfg.ch * m for m in cfg.ch_mult]
        widths = widths[::-1] if up else widths
        in_widths = [widths[0] if up else cfg.ch, *widths[:-1]]
        last = len(widths) - 1
        low = 0 if up else last  # the level at the lowest resolution
        outside = (cfg.z_channels, cfg.out_channels) if up else (cfg.in_channels, cfg.z_channels)
        self.conv_in = nn.Conv2d(outside[0], in_widths[0], 3, padding=1)
        if up:
            self.mid = _mid(widths[low], cfg)
        self.conv_blocks = nn.ModuleList(
            Level(
                in_widths[i],
                widths[i],
                cfg.num_res_blocks + up,
                with_attn=i == low,
                resample=None if i == last else "upsample" if up else "downsample",
                cfg=cfg,
            )
            for i in range(len(widths))
        )
        if not up:
            self.mid = _mid(widths[low], cfg)
        self.norm_out = _norm(widths[-1], cfg)
        self.conv_out = nn.Conv2d(widths[-1], outside[1], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for module in (*self.mid, *self.conv_blocks) if self.up else (*self.conv_blocks, *self.mid):
            h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _mid(c: int, cfg: VQConfig) -> nn.ModuleList:
    return nn.ModuleList([ResBlock(c, c, cfg), AttnBlock(c, cfg), ResBlock(c, c, cfg)])


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantizer over an (optionally l2-normalised) codebook."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.l2_norm = cfg.l2_norm
        self.beta = cfg.commit_beta
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)
        with torch.no_grad():
            weight = self.embedding.weight
            weight.uniform_(-1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
            if self.l2_norm:
                weight.copy_(F.normalize(weight, dim=-1))
        self.register_load_state_dict_pre_hook(_drop_usage_buffer)

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, dim=-1) if self.l2_norm else weight

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codeword vectors for ``indices`` of any shape: (...,) -> (..., codebook_dim)."""
        return self.codebook()[indices]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the closest codeword for each row of ``z`` (N, D); int64 (N,)."""
        codebook = self.codebook()
        # Half precision cannot separate thousands of near-equal distances; search in fp32.
        if z.dtype in (torch.float16, torch.bfloat16):
            z, codebook = z.float(), codebook.float()
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        dist = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.t()
        return dist.argmin(dim=1)

    def forward(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantize (B, D, h, w) latents: (straight-through latents, indices, VQ losses)."""
        b, d, h, w = z.shape
        z = z.permute(0, 2, 3, 1)
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        indices = self.nearest(z.reshape(-1, d)).view(b, h, w)
        z_q = self.lookup(indices).to(z.dtype)
        losses = {
            "codebook": F.mse_loss(z_q, z.detach()),
            "commitment": self.beta * F.mse_loss(z, z_q.detach()),
        }
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2), indices, losses


def _drop_usage_buffer(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    # LlamaGen's rolling codebook-usage statistics only matter while training there.
    state_dict.pop(prefix + "codebook_used", None)


class VQModel(nn.Module):
    """Encoder + vector quantizer + decoder."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Coder(cfg, up=False)
        self.decoder = Coder(cfg, up=True)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in [-1, 1] -> (quantized latents (B, D, h, w), codes (B, h, w))."""
        z_q, indices, _ = self.quantize(self._latents(x))
        return z_q, indices

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, D, h, w) -> images (B, C, H, W), nominal [-1, 1], unclamped."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) int64 -> images (B, C, H, W), nominal [-1, 1], unclamped."""
        z_q = self.quantize.lookup(indices).permute(0, 3, 1, 2).contiguous()
        return self.decode(z_q.to(self.post_quant_conv.weight.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: (reconstruction, VQ losses); LlamaGen weighs its entropy loss 0."""
        z_q, _, losses = self.quantize(self._latents(x))
        return self.decode(z_q), losses


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), with LlamaGen's arithmetic; half
    precision is widened first, as it cannot hold 127.5 * x + 128 to integer precision."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)


def from_pixels(img: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) images -> float (B, C, H, W) in [-1, 1]."""
    if img.dtype == torch.uint8:
        x = img.float() / 127.5 - 1.0
    elif img.is_floating_point():
        x = 2.0 * img.float() - 1.0
    else:
        raise TypeError(f"expected uint8 or floating-point pixels, got {img.dtype}")
    return x.permute(0, 3, 1, 2).contiguous() if channels_last else x
