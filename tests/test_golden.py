"""Golden tokens: the shipped digits models and tiny random transformers, recorded once.

Any change to the engine, the model, sampling or the tokenizer that is meant to keep behaviour
must keep these tokens exactly. Pixels are held to one level: convolution kernels differ between
CPUs (AVX2, AVX-512, AMX), and the uint8 rounding of a handful of pixels with them.

After a change that is meant to alter tokens, rewrite the file and say why in the commit:
    PARCLI_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VQ, tiny_model

import parcli
from parcli.pipeline import Pipeline, load_pipeline
from parcli.sampling import SamplingConfig
from parcli.vq import VQModel

GOLDEN = Path(__file__).parent / "golden" / "tokens.npz"
WRITE = os.environ.get("PARCLI_WRITE_GOLDEN") == "1"
DIGITS = Path(parcli.__file__).parent / "assets" / "digits"

# (name, regions, grid, sampling): tiny random transformers, three labels in batches of two.
TINY_CASES = [
    (f"tiny-n{n}-cfg{scale}", n, (8, 8), SamplingConfig(cfg_scale=scale))
    for n in (1, 4, 16)
    for scale in (1.0, 2.0)
] + [
    ("tiny-video-n4-cfg1.5", 4, (2, 8, 8), SamplingConfig(cfg_scale=1.5)),
    (
        "tiny-n4-filtered",
        4,
        (8, 8),
        SamplingConfig(cfg_scale=2.0, temperature=0.9, top_k=8, top_p=0.9),
    ),
]


def digits_case(regions: int) -> tuple[np.ndarray, np.ndarray]:
    pipe = load_pipeline(
        DIGITS / f"gpt-{regions}.safetensors",
        DIGITS / "vq.safetensors",
        torch.device("cpu"),
        torch.float32,
    )
    sampling = SamplingConfig(cfg_scale=1.0)  # as recorded: guidance off
    tokens = pipe.generate([0, 3, 7, 9], sampling, seed=0, batch_size=3)
    return tokens.numpy(), pipe.decode(tokens)


def tiny_case(regions: int, grid: tuple[int, ...], sampling: SamplingConfig):
    torch.manual_seed(1)
    vq = VQModel(TINY_VQ).eval()
    pipe = Pipeline(tiny_model(regions=regions, grid=grid), vq)
    tokens = pipe.generate([3, 1, 4], sampling, seed=11, batch_size=2)
    return tokens.numpy(), pipe.decode(tokens)


def all_cases():
    for n in (1, 4, 16):
        yield f"digits-n{n}", lambda n=n: digits_case(n)
    for name, n, grid, sampling in TINY_CASES:
        yield name, lambda n=n, grid=grid, sampling=sampling: tiny_case(n, grid, sampling)


CASES = dict(all_cases())


def test_write_golden_file():
    if not WRITE:
        pytest.skip("set PARCLI_WRITE_GOLDEN=1 to record the golden tokens afresh")
    arrays = {}
    for name, make in CASES.items():
        tokens, pixels = make()
        arrays[f"{name}/tokens"] = tokens
        arrays[f"{name}/pixels"] = pixels
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)


@pytest.mark.skipif(WRITE, reason="recording the golden file")
@pytest.mark.parametrize("name", list(CASES))
def test_same_tokens_and_pixels_as_recorded(name):
    golden = np.load(GOLDEN)
    tokens, pixels = CASES[name]()
    np.testing.assert_array_equal(tokens, golden[f"{name}/tokens"])
    expected = golden[f"{name}/pixels"]
    assert pixels.shape == expected.shape and pixels.dtype == expected.dtype
    difference = np.abs(pixels.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1
    assert np.count_nonzero(difference) <= max(1, pixels.size // 1000)
