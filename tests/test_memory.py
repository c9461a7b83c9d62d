"""Memory checks: a run the device cannot hold is refused before loading, naming what fits."""

from pathlib import Path

import pytest
import torch

import parcli
from parcli.config import GPTConfig
from parcli.engine import memory
from parcli.io.checkpoints import read_config
from parcli.plan import Plan
from parcli.vq import VQConfig
from tests.test_cli import assert_user_error, run

GPT_3B = GPTConfig(n_layer=24, n_head=32, dim=3200, grid=(24, 24), regions=16)


def test_parameter_counts_match_the_published_sizes():
    assert 3.05e9 < memory.parameter_count("gpt", GPT_3B) < 3.15e9  # GPT-3B: 3.1 B
    assert 71e6 < memory.parameter_count("vq", VQConfig()) < 73e6  # VQ-16: 72 M


def test_the_estimate_grows_with_the_batch_and_guidance():
    def total(batch, guided=True, samples=None):
        est = memory.estimate(GPT_3B, VQConfig(), torch.bfloat16, batch, samples or batch, guided)
        return est

    one, many = total(1), total(32)
    assert one.weights == many.weights and many.cache == 32 * one.cache
    assert total(8, guided=False).cache * 2 == total(8).cache
    # KV cache: 2 x 24 layers x 64 sequences x slots x 32 heads of 100, stored at 104, x 2 bytes
    slots = Plan((24, 24), 16).num_slots
    assert many.cache == 2 * 24 * 64 * slots * 32 * 104 * 2
    # The CPU's cache stores heads unpadded.
    on_cpu = memory.estimate(GPT_3B, VQConfig(), torch.bfloat16, 32, 32, True, device="cpu")
    assert on_cpu.cache == 2 * 24 * 64 * slots * 32 * 100 * 2


def test_largest_batch_bisects():
    assert memory.largest_batch(lambda b: b <= 37, 100) == 37
    assert memory.largest_batch(lambda b: False, 100) == 0
    assert memory.largest_batch(lambda b: True, 5) == 5


@pytest.fixture
def free_bytes(monkeypatch):
    def set_free(value):
        monkeypatch.setattr(memory, "available_bytes", lambda device: value)

    return set_free


def test_generate_refuses_a_batch_that_cannot_fit(free_bytes, tmp_path):
    assets = Path(parcli.__file__).parent / "assets" / "digits"
    _, gpt = read_config(assets / "gpt-1.safetensors")
    _, vq = read_config(assets / "vq.safetensors")
    need = memory.estimate(gpt, vq, torch.float32, 8, 8, True)
    free_bytes(int(need.total / memory.HEADROOM) - 1)
    out = tmp_path / "x.png"
    result = run("generate", "-m", "digits-1", "-c", 1, "-n", 8, "--batch-size", 8, "-o", out)
    assert_user_error(result, "--batch-size: 8 samples a batch need about", "--batch-size 7 fits")
    assert not out.exists()
    free_bytes(int(need.total / memory.HEADROOM) + 1)
    assert run("generate", "-m", "digits-1", "-c", 1, "-n", 8, "-q", "-o", out).exit_code == 0


def test_generate_refuses_more_pixels_than_memory(free_bytes, tmp_path):
    free_bytes(50_000_000)
    result = run("generate", "-m", "digits", "-c", 1, "-n", 100000, "--scale", 16, "-o",
                 tmp_path / "x.png")  # fmt: skip
    assert_user_error(result, "-n/--per-class: 100000 samples hold", "par sample")


def test_available_memory_is_known_here():
    free = memory.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_bench_refuses_before_building_what_cannot_fit(free_bytes):
    free_bytes(8 * 10**9)
    result = run("bench", "--arch", "GPT-3B", "--grid", "256", "--regions", "16")
    assert_user_error(result, "the model needs about", "12.7 GB of weights")
    result = run("bench", "--arch", "GPT-B", "--regions", "1", "--batch-size", "1,4096")
    assert_user_error(result, "--batch-size: 4096 samples a batch need about", "fits")
