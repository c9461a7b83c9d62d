"""Architecture descriptions of the autoregressive transformer (no torch needed)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from parcli.errors import SettingError

# (layers, heads, dim) of the published class-conditional architectures.
GPT_PRESETS: dict[str, tuple[int, int, int]] = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-3B": (24, 32, 3200),
}

SUPPORTED_REGIONS = (1, 4, 16)

# What a checkpoint file can hold: kind (as stored in its metadata) -> what it is called.
CHECKPOINT_KINDS = {"gpt": "transformer", "vq": "VQ tokenizer"}

VQ_STRIDE = 16  # pixels per token side of the published tokenizer: a 384 px image is 24x24


def preset_name(n_layer: int, dim: int) -> str | None:
    for name, (layers, _, width) in GPT_PRESETS.items():
        if (layers, width) == (n_layer, dim):
            return name
    return None


def preset_heads(n_layer: int, dim: int) -> int | None:
    name = preset_name(n_layer, dim)
    return GPT_PRESETS[name][1] if name else None


def parse_grid(text: str) -> tuple[int, ...]:
    """A token grid: `24` (square), `24x24` (rows x cols) or `5x16x16` (frames x rows x cols)."""
    wrong = f"a token grid is N, RxC or FxRxC, e.g. 24 or 24x24; not {text!r}"
    parts = str(text).lower().split("x")
    try:
        sides = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        raise SettingError("grid", wrong) from None
    if len(sides) not in (2, 3) or min(sides) < 1:
        raise SettingError("grid", wrong)
    return sides


def token_grid(grid: str | None, image_size: int, stride: int = VQ_STRIDE) -> tuple[int, ...]:
    """The grid `grid` names (see `parse_grid`), else the square grid of `image_size` pixels."""
    if grid is not None:
        return parse_grid(grid)
    if image_size < stride or image_size % stride:
        message = f"must be a positive multiple of {stride}, not {image_size}"
        raise SettingError("image_size", message)
    return image_size // stride, image_size // stride


def ffn_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    hidden = int(2 * 4 * dim / 3)
    return math.ceil(hidden / multiple_of) * multiple_of


@dataclass(frozen=True)
class GPTConfig:
    """Everything needed to build the transformer and its decoding plan."""

    n_layer: int
    n_head: int
    dim: int
    vocab_size: int = 16384
    num_classes: int = 1000
    grid: tuple[int, ...] = (24, 24)  # (rows, cols) for images, (frames, rows, cols) for video
    regions: int = 1
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    ffn_multiple_of: int = 256
    class_dropout: float = 0.1  # training only
    dropout: float = 0.0  # training only

    def __post_init__(self) -> None:
        if self.n_head < 1 or self.dim % self.n_head:
            raise SettingError("heads", f"dim {self.dim} is not divisible by {self.n_head} heads")
        if (self.dim // self.n_head) % 4:
            message = f"a head of {self.dim // self.n_head} is not divisible by 4, as rotary needs"
            raise SettingError("heads", message)
        if self.regions not in SUPPORTED_REGIONS:
            allowed = ", ".join(map(str, SUPPORTED_REGIONS))
            raise SettingError("regions", f"must be one of {allowed}, not {self.regions}")
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return ffn_hidden_dim(self.dim, self.ffn_multiple_of)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def arch(self) -> str:
        return preset_name(self.n_layer, self.dim) or f"custom-{self.n_layer}x{self.dim}"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["grid"] = tuple(known.get("grid", (24, 24)))
        return cls(**known)

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        layers, heads, dim = GPT_PRESETS[name]
        return cls(n_layer=layers, n_head=heads, dim=dim, **overrides)
