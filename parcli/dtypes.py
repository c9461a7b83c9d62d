"""The floating-point dtypes `par` computes and stores in, by the short names it uses for them."""

from __future__ import annotations

import torch

from parcli.errors import SettingError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}


def dtype_named(name: str, setting: str = "dtype") -> torch.dtype:
    """fp32, bf16 or fp16 (torch's names for them too) as a torch dtype."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DTYPES:
        raise SettingError(setting, f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype (fp32, bf16, fp16), else torch's own name for it."""
    short = {value: key for key, value in DTYPES.items()}
    return short.get(dtype, str(dtype).removeprefix("torch."))


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the transformer runs in; `auto` is bf16 on CUDA and fp32 elsewhere."""
    if str(name).strip().lower() == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype_named(name)
