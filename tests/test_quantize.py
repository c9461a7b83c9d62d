"""Weight-only int8: close to float32 per product, opt-in everywhere, recorded in the recipe."""

import json

import torch
import torch.nn.functional as F
from conftest import TINY_VQ, tiny_model
from torch import nn

from parcli.engine.packing import projection_bytes
from parcli.engine.quantize import Int8Linear, int8_linears, int8_products, quantize_int8
from parcli.io.recipe import read_recipe
from parcli.options import RunOptions
from parcli.pipeline import Pipeline
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
    quantized = Pipeline(tiny_model(regions=4, seed=2), vq, options=RunOptions(quantize="int8"))
    assert not quantized.engine.packed_projections
    tokens = quantized.generate([1, 2, 3, 4], greedy, 0, 4)
    assert tokens.shape == exact.shape
    assert (tokens == exact).float().mean() > 0.5


def test_generate_quantize_is_recorded_and_checked(files, tmp_path):
    out = tmp_path / "x.png"
    result = generate(files, "-c", 1, "--quantize", "int8", "-o", out)
    assert result.exit_code == 0, result.output
    assert read_recipe(out).run.quantize == "int8"
    assert "int8 weights" in run("info", out).output
    again = generate(files, "--from", out, "-o", tmp_path / "y.png", "--save-tokens",
                     tmp_path / "b.npy")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert_user_error(generate(files, "-c", 1, "--quantize", "int4"), "--quantize: must be int8")


def _rows(count: int, width: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(count))


def test_each_product_takes_the_kernel_its_row_count_asks_for():
    torch.manual_seed(0)
    linear = Int8Linear(nn.Linear(64, 48, bias=False).weight)
    linear.widen_from_rows = 4
    weight, scales = linear.weight_int8, linear.kernel_scales
    few, many = _rows(3, 64), _rows(4, 64)
    fused = torch._weight_int8pack_mm(few.bfloat16(), weight, scales).float()
    assert torch.equal(linear(few), fused)
    widened = (F.linear(many.bfloat16(), weight.bfloat16()) * scales).float()
    assert torch.equal(linear(many), widened)
    # The two kernels compute the same product, up to where they round.
    both = torch._weight_int8pack_mm(many.bfloat16(), weight, scales).float()
    assert (both - widened).abs().max() <= 0.01 * widened.abs().max()


def test_without_the_fused_kernel_every_product_widens(monkeypatch):
    from parcli.engine import quantize

    monkeypatch.setattr(quantize, "_kernel_runs", lambda device: False)
    model = quantize_int8(tiny_model(regions=4))
    assert {m.widen_from_rows for m in int8_linears(model)} == {1}
    assert int8_products(model) == quantize.WIDENED
    x = _rows(2, 64)
    linear = int8_linears(model)[0]
    assert linear(x[:, : linear.in_features]).isfinite().all()


def test_the_widening_threshold_is_measured_once_and_remembered():
    from parcli.engine import quantize

    shape = (3 * 64, 64)  # the tiny model's wqkv
    threads = torch.get_num_threads()
    quantize.widening_rows.cache_clear()  # measured by an earlier test, in another cache
    first = quantize.widening_rows(shape, threads)
    assert first is None or first in quantize.ROW_CANDIDATES
    assert quantize.widening_rows(shape, threads) == first  # cached: no second timing
    quantize.widening_rows.cache_clear()
    stored = json.loads(quantize.kernels_path().read_text())
    key = next(k for k in stored if "int8 192x64" in k and f"| {threads} threads |" in k)
    quantize.kernels_path().write_text(json.dumps({**stored, key: "16"}))
    assert quantize.widening_rows(shape, threads) == 16  # read back, not measured again
    model = quantize_int8(tiny_model(regions=4))
    quantize.choose_products(model)
    wqkv = model.layers[0].attention.wqkv
    assert (wqkv.out_features, wqkv.in_features) == shape and wqkv.widen_from_rows == 16
    quantize.widening_rows.cache_clear()
    quantize.kernels_path().write_text(json.dumps({**stored, key: quantize.NEVER}))
    assert quantize.widening_rows(shape, threads) is None
    quantize.widening_rows.cache_clear()


def test_the_products_are_chosen_at_the_thread_count_the_run_uses(monkeypatch):
    from parcli.engine import quantize
    from parcli.engine.threads import use_threads

    asked = []
    monkeypatch.setattr(quantize, "widening_rows", lambda shape, threads: asked.append(threads))
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pipe = Pipeline(
            tiny_model(regions=4), VQModel(TINY_VQ).eval(), options=RunOptions(quantize="int8")
        )
        assert asked == []  # not at load, where the thread count is not the run's yet
        assert use_threads(pipe.model) == 1  # a small model runs on one thread
        pipe.runner(sequences=2)
        pipe.runner(sequences=4)
        assert asked and set(asked) == {1}
        assert len(asked) == len(quantize.int8_linears(pipe.model))  # once, at the first runner
    finally:
        torch.set_num_threads(saved)


def test_the_products_are_named():
    model = quantize_int8(tiny_model(regions=4))
    linears = int8_linears(model)
    for linear, rows in zip(linears, [8, 16] * len(linears), strict=False):
        linear.widen_from_rows = rows
    linears[0].widen_from_rows = None
    assert int8_products(model) == (
        "torch._weight_int8pack_mm below 8 to 16 rows, widened to bf16 from there "
        "(some shapes never)"
    )
