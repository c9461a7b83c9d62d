"""Architecture descriptions of the autoregressive transformer (no torch needed)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import get_type_hints

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

# Frames per second: of generated clips, and of --animate (a fixed rate, so that an animation's
# length shows how many passes it took). Here, not in parcli.io, so help texts need no numpy.
CLIP_FPS = 8.0
ANIMATION_FPS = 24.0

VQ_STRIDE = 16  # pixels per token side of the published tokenizer: a 384 px image is 24x24

# Bounds on what a file's config may declare, far above any real model, so that a lying header
# is refused before anything is built from it.
MAX_TOKENS = 1 << 16  # tokens of one image or clip
_INT_LIMITS = {
    "n_layer": 1024, "n_head": 1024, "dim": 1 << 16, "vocab_size": 1 << 22,
    "num_classes": 1 << 22, "ffn_multiple_of": 1 << 16, "codebook_size": 1 << 22,
    "codebook_dim": 1 << 12, "z_channels": 1 << 14, "ch": 1 << 14, "num_res_blocks": 64,
    "in_channels": 4, "out_channels": 4, "norm_groups": 1024, "regions": 16,
}  # fmt: skip
_UNIT_INTERVAL = ("class_dropout", "dropout", "commit_beta")


def check_config_data(data: object, fields: dict[str, type | str]) -> dict:
    """A config read from a file, with every field's type and range checked; raises ValueError
    naming the first bad one. `fields` maps names to int, float, bool, or "ints" (a list)."""
    if not isinstance(data, dict):
        raise ValueError("the config is not a JSON object")
    known = {}
    for name, value in data.items():
        kind = fields.get(name)
        if kind is None:
            raise ValueError(f"unknown config field {name!r}")
        if kind == "ints" and (not isinstance(value, list | tuple) or not value or len(value) > 8):
            raise ValueError(f"{name} must be a list of integers")
        limit = _INT_LIMITS.get(name, 1 << 16)
        for item in value if kind == "ints" else [value] if kind is int else []:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"{name} must be an integer, not {item!r}")
            if not 1 <= item <= limit:
                raise ValueError(f"{name} must be between 1 and {limit}, not {item}")
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
            if name in _UNIT_INTERVAL and value > 1:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        elif kind is bool and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        known[name] = value
    return known


def preset_name(n_layer: int, dim: int) -> str | None:
    for name, (layers, _, width) in GPT_PRESETS.items():
        if (layers, width) == (n_layer, dim):
            return name
    return None


def token_grid(grid: str | None, image_size: int, stride: int = VQ_STRIDE) -> tuple[int, ...]:
    """The grid `grid` names (`24`, `24x24`, `5x16x16`), else the square one of `image_size` px."""
    if grid is None:
        side = image_side(image_size, stride)
        return side, side
    wrong = f"a token grid is N, RxC or FxRxC, e.g. 24 or 24x24; not {grid!r}"
    parts = str(grid).lower().split("x")
    try:
        sides = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        raise SettingError("grid", wrong) from None
    if len(sides) not in (2, 3) or min(sides) < 1:
        raise SettingError("grid", wrong)
    if math.prod(sides) > MAX_TOKENS:
        # The bound par's loader puts on a file's grid: a larger one would be written, then refused.
        tokens = f"{'x'.join(map(str, sides))} is {math.prod(sides)} tokens"
        message = f"{tokens}, over the {MAX_TOKENS} par loads; give a smaller grid"
        raise SettingError("grid", message)
    return sides


def image_side(image_size: int, stride: int = VQ_STRIDE) -> int:
    """Tokens per side of a square image of `image_size` pixels, refusing sizes the tokenizer
    cannot cut into whole tokens and squares of more tokens than par loads."""
    largest = math.isqrt(MAX_TOKENS) * stride
    if image_size < stride or image_size % stride or image_size > largest:
        message = f"must be a positive multiple of {stride} up to {largest}, not {image_size}"
        raise SettingError("image_size", message)
    return image_size // stride


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
    def arch(self) -> str:
        return preset_name(self.n_layer, self.dim) or f"custom-{self.n_layer}x{self.dim}"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        """The config a file declares, every field checked before anything is built from it."""
        known = check_config_data(data, _GPT_FIELDS)
        grid = list(known.get("grid", (24, 24)))  # __post_init__ makes it a tuple
        if not 2 <= len(grid) <= 3 or math.prod(grid) > MAX_TOKENS:
            raise ValueError(f"grid {grid} is not 2 or 3 sides of at most {MAX_TOKENS} tokens")
        if known.get("rope_base", 1) <= 0 or known.get("norm_eps", 1) <= 0:
            raise ValueError("rope_base and norm_eps must be positive")
        return cls(**known)

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        layers, heads, dim = GPT_PRESETS[name]
        return cls(n_layer=layers, n_head=heads, dim=dim, **overrides)


# The fields a file's config may declare, by type (the grid: a list of ints).
_GPT_FIELDS = {k: t if t in (int, float) else "ints" for k, t in get_type_hints(GPTConfig).items()}
