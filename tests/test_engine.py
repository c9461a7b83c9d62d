import subprocess
import sys

import pytest
import torch
from conftest import tiny_model

from parcli.engine.policy import FIXED_SHAPE, PREFIX, Engine, choose_engine, set_cuda_backends
from parcli.engine.runners import COMPILED_VERSIONS, FixedShapeRunner
from parcli.errors import SettingError
from parcli.options import RunOptions
from parcli.plan import Plan

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "dtype", "compile", "plain", "expected"),
    [
        (
            CPU,
            torch.float32,
            None,
            False,
            Engine(PREFIX, packed_projections=True, channels_last_vq=True),
        ),
        (
            CPU,
            torch.bfloat16,
            None,
            False,
            Engine(PREFIX, packed_projections=True, channels_last_vq=True),
        ),
        (CPU, torch.float16, None, False, Engine(PREFIX, channels_last_vq=True)),
        (
            CPU,
            torch.float32,
            True,
            False,
            Engine(FIXED_SHAPE, compiled=True, channels_last_vq=True),
        ),
        (
            CUDA,
            torch.bfloat16,
            None,
            False,
            Engine(FIXED_SHAPE, cuda_graphs=True, compiled=True, channels_last_vq=True),
        ),
        (
            CUDA,
            torch.float32,
            False,
            False,
            Engine(FIXED_SHAPE, cuda_graphs=True, channels_last_vq=True),
        ),
        (CUDA, torch.bfloat16, None, True, Engine(FIXED_SHAPE, reference_kernels=True)),
        (CPU, torch.float32, True, True, Engine(FIXED_SHAPE, reference_kernels=True)),
        (torch.device("mps"), torch.float32, None, False, Engine(PREFIX, channels_last_vq=True)),
    ],
)
def test_one_table_says_what_runs_where(device, dtype, compile, plain, expected):
    assert choose_engine(device, dtype, RunOptions(compile=compile), plain) == expected


def test_the_reference_kernels_are_graphed_on_cuda_and_never_compiled():
    graphed = Engine(FIXED_SHAPE, cuda_graphs=True, reference_kernels=True)
    reference = RunOptions(reference_kernels=True)
    assert choose_engine(CUDA, torch.bfloat16, reference) == graphed
    assert (
        choose_engine(CUDA, torch.bfloat16, RunOptions(compile=False, reference_kernels=True))
        == graphed
    )
    plain = Engine(FIXED_SHAPE, reference_kernels=True)
    assert choose_engine(CPU, torch.float32, reference) == plain
    with pytest.raises(SettingError, match="compile"):
        RunOptions(compile=True, reference_kernels=True).check()


def test_speedups_are_named():
    engine = choose_engine(CUDA, torch.bfloat16, RunOptions())
    assert engine.speedups() == ["CUDA graphs", "torch.compile", "channels-last VQ"]
    assert choose_engine(CPU, torch.float32, RunOptions(), plain=True).speedups() == []


def test_the_model_imports_no_engine_and_no_plan():
    code = (
        "import sys, parcli.model; print(sorted(m for m in sys.modules if m.startswith('parcli')))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.split() == [
        "['parcli',",
        "'parcli.config',",
        "'parcli.errors',",
        "'parcli.model']",
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("meta", "does not run on meta devices"),
        ("cpu:1", "one CPU device"),
        ("xpu", "does not run on xpu devices"),
        ("bogus", "unknown device 'bogus'"),
        ("mps", "MPS was asked for but is not available"),
        ("cuda:2", "cuda:2 does not exist: the GPUs here are cuda:0 to cuda:1"),
    ],
)
def test_devices_that_cannot_run_are_refused_by_name(monkeypatch, name, message):
    from parcli.engine.devices import resolve_device
    from parcli.errors import SettingError

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SettingError, match=message) as info:
        resolve_device(name)
    assert info.value.setting == "device"


def test_devices_that_can_run():
    from parcli.engine.devices import resolve_device

    assert resolve_device("cpu:0") == CPU and resolve_device("cpu") == CPU
    assert resolve_device("auto") == (CUDA if torch.cuda.is_available() else CPU)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from parcli.engine.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_threads_follow_the_work_unless_asked(monkeypatch):
    from parcli.engine.threads import SMALL_MODEL, choose_threads
    from parcli.errors import SettingError

    monkeypatch.setattr("parcli.engine.threads._default_threads", lambda: 8)
    assert choose_threads(1_200_000) == 1  # the digits models
    assert choose_threads(SMALL_MODEL) == 8  # GPT-B and up: one per core
    assert choose_threads(1_200_000, requested=3) == 3
    with pytest.raises(SettingError, match="between 1 and"):
        choose_threads(10, requested=0)


def test_a_compiled_runner_lets_dynamo_keep_a_bench_worth_of_versions():
    # Three region counts at two batch sizes with two pass widths each: past Dynamo's default 8.
    with torch._dynamo.config.patch(recompile_limit=8):
        FixedShapeRunner(tiny_model(regions=4), Plan((8, 8), 4), 2, compiled=True)
        assert torch._dynamo.config.recompile_limit == COMPILED_VERSIONS >= 3 * 2 * 2


def test_cuda_backends_are_set_explicitly():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = False, False, True
        set_cuda_backends()
        assert cudnn.benchmark and cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved
