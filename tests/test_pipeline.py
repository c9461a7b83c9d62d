import pytest
import torch
from conftest import TINY_VQ, tiny_model

from parcli.pipeline import Pipeline, PipelineError, emulated_dtype_note
from parcli.sampling import SamplingConfig
from parcli.vq import VQModel


@pytest.mark.parametrize("regions", [1, 4])
def test_plain_engine_gives_the_same_tokens_as_ours(regions):
    sampling = SamplingConfig(cfg_scale=2.0)
    ours = Pipeline(tiny_model(regions=regions), VQModel(TINY_VQ).eval())
    plain = ours.plain_twin()
    shared = plain.model.output.weight.data_ptr() == ours.model.output.weight.data_ptr()
    assert plain.plain and shared  # the same storage, not a copy
    tokens = ours.generate([1, 2, 3], sampling, seed=5, batch_size=2)
    assert not any(isinstance(m, torch.nn.Linear) for m in ours.model.modules())
    assert torch.equal(tokens, plain.generate([1, 2, 3], sampling, seed=5, batch_size=2))
    assert any(isinstance(m, torch.nn.Linear) for m in plain.model.modules())
    assert plain.vq.memory_format == torch.contiguous_format
    with pytest.raises(PipelineError, match="before the weights are packed"):
        ours.plain_twin()


@pytest.mark.parametrize("feature", ["avx512_bf16", "amx_tile"])
def test_bf16_is_quiet_where_the_cpu_has_it(monkeypatch, feature):
    for name in ("avx512_bf16", "amx_tile"):
        monkeypatch.setattr(torch.cpu, f"_is_{name}_supported", lambda n=name: n == feature)
    assert emulated_dtype_note(torch.device("cpu"), torch.bfloat16) is None


def test_bf16_without_native_support_says_what_to_use(monkeypatch):
    for name in ("avx512_bf16", "amx_tile"):
        monkeypatch.setattr(torch.cpu, f"_is_{name}_supported", lambda: False)
    note = emulated_dtype_note(torch.device("cpu"), torch.bfloat16)
    assert "AVX512-BF16 or AMX" in note and "--dtype fp32" in note


def test_fp32_and_gpus_need_no_note():
    assert emulated_dtype_note(torch.device("cpu"), torch.float32) is None
    assert emulated_dtype_note(torch.device("cuda"), torch.bfloat16) is None


@pytest.mark.parametrize(("spare", "keeps_plain"), [(None, True), (1 << 40, True), (1000, False)])
def test_second_weight_copy_only_where_memory_allows(monkeypatch, spare, keeps_plain):
    from parcli import pipeline
    from parcli.model import PackedLinear

    monkeypatch.setattr(pipeline, "available_memory", lambda: spare)
    pipe = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval())
    pipe.steps(rows=8)
    packed = [m for m in pipe.model.modules() if isinstance(m, PackedLinear)]
    assert packed and all((m.weight is not None) == keeps_plain for m in packed)


def test_compiled_pipeline_gives_the_same_tokens_and_leaves_weights_unpacked():
    """The CUDA default (torch.compile of the fixed-shape step), checked here through Inductor's
    CPU backend: compiling must not change a single token, and Inductor gets plain weights."""
    sampling = SamplingConfig(cfg_scale=1.5)
    eager = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval())
    compiled = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval(), compile_model=True)
    tokens = compiled.generate([2, 9], sampling, seed=3, batch_size=2)
    assert torch.equal(tokens, eager.generate([2, 9], sampling, seed=3, batch_size=2))
    assert not compiled.packed and eager.packed
