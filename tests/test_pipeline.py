import pytest
import torch

from parcli.pipeline import emulated_dtype_note


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
