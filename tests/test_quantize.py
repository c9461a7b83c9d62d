"""Weight-only int8: close to float32 per product, opt-in everywhere, recorded in the recipe."""

import torch
from conftest import TINY_VQ, tiny_model
from torch import nn

from parcli.engine.packing import projection_bytes
from parcli.engine.quantize import Int8Linear, quantize_int8
from parcli.pipeline import Pipeline
from parcli.provenance import read_recipe
from parcli.sampling import SamplingConfig
from parcli.vq import VQModel
from tests.test_cli import assert_user_error, generate, run


def test_an_int8_product_is_within_rounding_of_float32():
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=False)
    x = torch.randn(5, 7, 256)
    exact = linear(x)
    approx = Int8Linear(linear.weight)(x)
    assert approx.shape == exact.shape and approx.dtype == exact.dtype
    error = (approx - exact).abs().max() / exact.abs().max()
    assert error < 0.02  # int8 weights (1/254 of a row's largest) and bf16 inputs (2^-8)


def test_every_projection_is_swapped_and_reads_a_quarter_of_the_bytes():
    model = tiny_model(regions=4)
    before = projection_bytes(model)
    quantize_int8(model)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == model.cfg.n_layer * 5 + 1  # wqkv, wo, w1, w2, w3; the output head
    after = projection_bytes(model)
    assert 0.25 <= after / before < 0.3  # int8 weights plus one float32 scale a row


def test_an_int8_pipeline_generates_and_mostly_agrees_with_float32():
    torch.manual_seed(1)
    vq = VQModel(TINY_VQ).eval()
    greedy = SamplingConfig(cfg_scale=1.0, top_k=1)
    exact = Pipeline(tiny_model(regions=4, seed=2), vq).generate([1, 2, 3, 4], greedy, 0, 4)
    quantized = Pipeline(tiny_model(regions=4, seed=2), vq, quantize="int8")
    assert not quantized.engine.packed_projections
    tokens = quantized.generate([1, 2, 3, 4], greedy, 0, 4)
    assert tokens.shape == exact.shape
    assert (tokens == exact).float().mean() > 0.5


def test_generate_quantize_is_recorded_and_checked(files, tmp_path):
    out = tmp_path / "x.png"
    result = generate(files, "-c", 1, "--quantize", "int8", "-o", out)
    assert result.exit_code == 0, result.output
    assert read_recipe(out).quantize == "int8"
    assert "int8 weights" in run("info", out).output
    again = generate(files, "--from", out, "-o", tmp_path / "y.png", "--save-tokens",
                     tmp_path / "b.npy")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert_user_error(generate(files, "-c", 1, "--quantize", "int4"), "--quantize: must be int8")
