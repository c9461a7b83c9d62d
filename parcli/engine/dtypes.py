"""The floating-point dtypes `par` computes and stores in, by their short names."""

from __future__ import annotations

import torch

from parcli.errors import SettingError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def named_dtype(name: str, word: str) -> torch.dtype | None:
    """One of DTYPES by its short name or torch's, or None for `word` ("decide for me")."""
    key = str(name).strip().lower()
    if key == word:
        return None
    dtype = DTYPES.get(key) or getattr(torch, key, None)
    if dtype not in DTYPES.values():
        raise SettingError("dtype", f"unknown dtype {name!r}; use {word}, {', '.join(DTYPES)}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype (fp32, bf16, fp16), else torch's own name for it."""
    short = {value: key for key, value in DTYPES.items()}
    return short.get(dtype, str(dtype).removeprefix("torch."))


def storage_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The dtype floating tensors are stored or loaded in; `keep` (or None) keeps theirs."""
    if name is None or isinstance(name, torch.dtype):
        return name
    return named_dtype(name, "keep")
