import contextlib
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_VQ, tiny_model

from parcli.engine.devices import emulated_dtype_note
from parcli.engine.packing import PackedLinear
from parcli.errors import SettingError
from parcli.options import RunOptions
from parcli.pipeline import Pipeline, PipelineError
from parcli.sampling import SamplingConfig
from parcli.vq import VQModel


@pytest.mark.parametrize("regions", [1, 4])
def test_the_plain_engine_picks_attention_kernels_as_the_reference_does(regions, monkeypatch):
    """LlamaGen's and PAR's decoding loop runs every pass after the first with SDPA's fused
    kernels off (the math kernel), over a cache in the model's dtype; in bf16 their tokens
    depend on it (GPT-B: all greedy tokens the same with it, 41 to 68 % without)."""
    import torch.nn.functional as F

    real, seen = F.scaled_dot_product_attention, []

    def spy(q, k, v, **kwargs):
        seen.append((torch.backends.cuda.flash_sdp_enabled(), k.dtype))
        return real(q, k, v, **kwargs)

    model = tiny_model(regions=regions).to(torch.bfloat16)
    plain = Pipeline(model, VQModel(TINY_VQ).eval(), plain_engine=True)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    plain.generate([1, 2], SamplingConfig(cfg_scale=2.0), seed=0, batch_size=2)
    layers, passes = model.cfg.n_layer, plain.plan.num_passes
    assert len(seen) == layers * passes
    assert [fused for fused, _ in seen] == [True] * layers + [False] * layers * (passes - 1)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}  # not the float32 cache of n = 1
    assert torch.backends.cuda.flash_sdp_enabled()  # and the setting is back as it was


@pytest.mark.parametrize("regions", [1, 4])
def test_reference_kernels_draw_the_plain_engines_bf16_tokens(regions):
    # In bf16 the kernels decide the tokens: `--reference-kernels` runs the plain engine's.
    sampling = SamplingConfig(cfg_scale=2.0)
    model = tiny_model(regions=regions).to(torch.bfloat16)
    chosen = Pipeline(model, VQModel(TINY_VQ).eval(), options=RunOptions(reference_kernels=True))
    assert chosen.engine.reference_kernels and not chosen.engine.compiled
    plain = chosen.plain_engine_twin()
    tokens = chosen.generate([1, 2, 3], sampling, seed=5, batch_size=3)
    assert torch.equal(tokens, plain.generate([1, 2, 3], sampling, seed=5, batch_size=3))
    assert not channels_last(chosen.vq)  # the reference's decoder layout too
    with pytest.raises(SettingError, match="--reference-kernels"):
        Pipeline(
            model, VQModel(TINY_VQ).eval(), options=RunOptions(compile=True, reference_kernels=True)
        )


def test_graphs_of_the_reference_kernels_are_captured_apart_under_each(monkeypatch):
    """The first pass takes SDPA's default kernels and the later ones of its width the math
    kernel: each must be captured under its own (a replayed graph keeps what it captured)."""
    from parcli.engine.runners import FixedShapeRunner
    from parcli.plan import Plan

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    model, plan = tiny_model(regions=1), Plan((8, 8), 1)
    runner = FixedShapeRunner(model, plan, 2, cuda_graphs=True, reference_kernels=True)
    captured = []

    def capture(h):
        captured.append((h.shape[1], torch.backends.cuda.flash_sdp_enabled()))
        return SimpleNamespace(replay=lambda: None), h.clone(), runner.forward(h)

    monkeypatch.setattr(runner, "_capture", capture)
    h = torch.zeros(2, 1, model.cfg.dim)
    for step in plan.passes[:3]:
        runner(step, h)
    assert captured == [(1, True), (1, False)]  # the first pass, then the others of width 1
    assert set(runner.graphs) == {(1, False), (1, True)}


def channels_last(vq: VQModel) -> bool:
    weight = vq.decoder.conv_in.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("regions", [1, 4])
def test_plain_engine_gives_the_same_tokens_as_ours(regions):
    sampling = SamplingConfig(cfg_scale=2.0)
    ours = Pipeline(tiny_model(regions=regions), VQModel(TINY_VQ).eval())
    plain = ours.plain_engine_twin()
    shared = plain.model.output.weight.data_ptr() == ours.model.output.weight.data_ptr()
    assert plain.plain_engine and shared  # the same storage, not a copy
    tokens = ours.generate([1, 2, 3], sampling, seed=5, batch_size=2)
    assert not any(isinstance(m, torch.nn.Linear) for m in ours.model.modules())
    assert torch.equal(tokens, plain.generate([1, 2, 3], sampling, seed=5, batch_size=2))
    assert any(isinstance(m, torch.nn.Linear) for m in plain.model.modules())
    assert channels_last(ours.vq) and not channels_last(plain.vq)
    with pytest.raises(PipelineError, match="before the weights are packed"):
        ours.plain_engine_twin()


@pytest.mark.parametrize("feature", ["avx512_bf16", "amx_tile"])
def test_bf16_is_quiet_where_the_cpu_has_it(monkeypatch, feature):
    for name in ("avx512_bf16", "amx_tile"):
        monkeypatch.setattr(torch.cpu, f"_is_{name}_supported", lambda n=name: n == feature)
    assert emulated_dtype_note(torch.device("cpu"), torch.bfloat16) is None


def test_bf16_without_native_support_says_what_to_use(monkeypatch):
    for name in ("avx512_bf16", "amx_tile"):
        monkeypatch.setattr(torch.cpu, f"_is_{name}_supported", lambda: False)
    note = emulated_dtype_note(torch.device("cpu"), torch.bfloat16)
    assert "AVX512-BF16 or AMX" in note and "fp32 is the fast dtype" in note


def test_fp32_and_gpus_need_no_note():
    assert emulated_dtype_note(torch.device("cpu"), torch.float32) is None
    assert emulated_dtype_note(torch.device("cuda"), torch.bfloat16) is None


def test_projections_are_packed_for_the_widest_pass():
    pipe = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval())
    pipe.runner(sequences=8)
    packed = [m for m in pipe.model.modules() if isinstance(m, PackedLinear)]
    assert packed and all(m.input_rows == 8 * 4 for m in packed)  # the widest pass of 8 sequences


def test_compiled_pipeline_gives_the_same_tokens_and_leaves_weights_unpacked():
    """The CUDA default (torch.compile of the fixed-shape step), checked here through Inductor's
    CPU backend: compiling must not change a single token, and Inductor gets plain weights."""
    sampling = SamplingConfig(cfg_scale=1.5)
    eager = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval())
    compiled = Pipeline(
        tiny_model(regions=4), VQModel(TINY_VQ).eval(), options=RunOptions(compile=True)
    )
    tokens = compiled.generate([2, 9, 4], sampling, seed=3, batch_size=2)
    assert torch.equal(tokens, eager.generate([2, 9, 4], sampling, seed=3, batch_size=2))
    assert not compiled.packed and eager.packed
    # The short last batch ran padded to the first one's size: one runner, nothing recompiled.
    assert list(compiled._runners) == [4]
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = compiled.generate([9, 4, 2], sampling, seed=3, batch_size=2, indices=[1, 2, 0])
    assert torch.equal(again, tokens[[1, 2, 0]])


@pytest.mark.parametrize("regions", [1, 4, 16])
def test_an_image_is_the_same_whatever_the_batch(regions):
    pipe = Pipeline(tiny_model(regions=regions), VQModel(TINY_VQ).eval())
    sampling = SamplingConfig(cfg_scale=2.0, temperature=0.9, top_k=12)
    labels = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    runs = [pipe.generate(labels, sampling, seed=11, batch_size=b) for b in (1, 3, 8)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    # A run that starts at image 4 (a resumed run, another process's share) draws the same.
    tail = pipe.generate(labels[4:], sampling, seed=11, batch_size=2, indices=range(4, 9))
    assert torch.equal(tail, runs[0][4:])
    # Images of the same class differ, and another seed gives other images.
    assert not torch.equal(runs[0][1], runs[0][3])
    assert not torch.equal(pipe.generate(labels, sampling, seed=12, batch_size=3), runs[0])


def test_the_shipped_digits_draw_the_same_images_in_any_batch():
    from pathlib import Path

    import parcli
    from parcli.pipeline import load_pipeline

    digits = Path(parcli.__file__).parent / "assets" / "digits"
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    files = (digits / "gpt-4.safetensors", digits / "vq.safetensors")
    pipe = load_pipeline(*files, torch.device("cpu"), torch.float32)
    for sampling, batches in (
        (pipe.sampling(cfg_scale=1.0), (1, 3, 8)),
        (pipe.sampling(), (1, 2, 3, 8)),  # guidance on: an image alone too
    ):
        runs = [pipe.generate(labels, sampling, seed=0, batch_size=b) for b in batches]
        assert all(torch.equal(runs[0], run) for run in runs)


def test_sampling_settings_default_to_the_models_own():
    defaults = SamplingConfig(cfg_scale=1.75, temperature=0.9, top_k=40, top_p=0.95)
    pipe = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval(), "tiny", defaults)
    assert pipe.sampling() == defaults and pipe.defaults.cfg_scale == 1.75

    def given(**settings):
        options = RunOptions(**settings)
        return Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval(), "tiny", defaults, options)

    assert given(top_k=0).sampling() == SamplingConfig(1.75, 0.9, 0, 0.95)
    assert given(cfg_scale=1.0, temperature=1.0, top_p=1.0).sampling() == SamplingConfig(
        1.0, 1.0, 40
    )
    assert pipe.plain_engine_twin().defaults == defaults


def test_pipelines_of_other_region_counts_share_a_cache_and_keep_their_tokens():
    sampling = SamplingConfig(cfg_scale=1.5)
    four = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval())
    expected = four.generate([2, 9], sampling, seed=3, batch_size=2)
    sixteen = Pipeline(tiny_model(regions=16, seed=1), VQModel(TINY_VQ).eval())
    sixteen.generate([5, 1], sampling, seed=4, batch_size=2)  # leaves its keys in the cache
    assert sixteen.runner(4).cache is four.runner(4).cache
    assert four.runner(2).cache is not four.runner(4).cache
    assert torch.equal(four.generate([2, 9], sampling, seed=3, batch_size=2), expected)
