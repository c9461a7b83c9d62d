import subprocess
import sys

import pytest
import torch

from parcli.engine.policy import FIXED_SHAPE, PREFIX, Engine, choose_engine

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
        (CPU, torch.bfloat16, None, False, Engine(PREFIX, channels_last_vq=True)),
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
        (CUDA, torch.bfloat16, None, True, Engine(FIXED_SHAPE)),
        (CPU, torch.float32, True, True, Engine(FIXED_SHAPE)),
    ],
)
def test_one_table_says_what_runs_where(device, dtype, compile, plain, expected):
    assert choose_engine(device, dtype, compile, plain) == expected


def test_speedups_are_named():
    engine = choose_engine(CUDA, torch.bfloat16)
    assert engine.speedups() == ["CUDA graphs", "torch.compile", "channels-last VQ"]
    assert choose_engine(CPU, torch.float32, plain=True).speedups() == []


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
