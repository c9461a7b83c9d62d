"""`make gpu-check` runs once, on a GPU lent for minutes: its commands must be right before then.

Each step's command is run here as the script words it, but on the CPU, with a tiny stand-in for
the published architectures and small batches, so that a mistyped option fails here and not on
the GPU."""

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.test_cli import run

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "measure" / "gpu_check.sh"
BUDGET_S = 360  # the 6 minutes on one H100, compiling included


def steps() -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) of every `step` line of the script."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        match = re.match(r"\s*step (\S+) (\d+) (.+)$", line)
        if match:
            found.append((match[1], int(match[2]), shlex.split(match[3])))
    return found


def test_the_steps_fit_the_time_budget():
    limits = {name: limit for name, limit, _ in steps()}
    expected = {"tests", "bench-3b", "bench-3b-vs-plain", "bench-b-dtypes", "vq-layouts"}
    assert expected | {"int8-products", "attention-kernels"} <= set(limits)
    assert sum(limits.values()) <= BUDGET_S


def test_the_test_and_script_steps_name_files_that_exist():
    for name, _, command in steps():
        if name == "tests":
            assert command[-1] == "tests/test_cuda.py" and (ROOT / command[-1]).is_file()
        elif "parcli" not in command:
            assert (ROOT / command[1]).is_file(), command


def test_the_int8_products_script_runs_here():
    import subprocess
    import sys

    (command,) = [command for step, _, command in steps() if step == "int8-products"]
    script = ROOT / command[1]
    result = subprocess.run([sys.executable, script, "GPT-B", "16"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " rows: " in line]
    assert len(lines) == 8 and all("bf16" in line and "int8 op" in line for line in lines)


def test_the_attention_kernels_script_runs_here():
    import subprocess
    import sys

    (command,) = [command for step, _, command in steps() if step == "attention-kernels"]
    script = ROOT / command[1]
    result = subprocess.run([sys.executable, script, "GPT-B", "1", "2"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("n = ")]
    assert len(lines) == 3 and all("fused " in line and "math " in line for line in lines)
    assert "failed" not in result.stdout


@pytest.mark.parametrize(
    "name", ["bench-3b", "bench-3b-vs-plain", "bench-b-dtypes", "bench-3b-sjd"]
)
def test_each_bench_step_runs_as_worded(name, tmp_path, monkeypatch):
    from parcli.config import GPT_PRESETS

    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    (command,) = [command for step, _, command in steps() if step == name]
    assert command[:4] == ["$PY", "-m", "parcli", "bench"]
    args = [
        "GPT-tiny" if word in ("GPT-3B", "GPT-B") else word.replace("$DIR", str(tmp_path))
        for word in command[4:]
    ]
    args = [",".join(str(min(int(b), 2)) for b in a.split(",")) if _is_batches(args, i) else a
            for i, a in enumerate(args)]  # fmt: skip
    result = run("bench", *args, "--grid", "8", "--no-decode")
    assert result.exit_code == 0, result.output
    (report,) = tmp_path.glob("*.json")
    rows = json.loads(report.read_text())["rows"]
    assert {row["regions"] for row in rows} == {1, 4, 16}
    # The script's last lines turn it into a markdown table, a row per case.
    lines = bench_tables(report).splitlines()
    assert lines[0] == "### GPT-tiny · random weights: speed only · grid 8x8"
    assert sum(line.startswith("| ") for line in lines) == 1 + len(rows)


def bench_tables(*paths) -> str:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, ROOT / "measure" / "bench_tables.py", *paths],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_tables_say_where_gpt_3b_stands_against_the_targets(tmp_path):
    row = dict(regions=16, batch=1, engine="ours", passes=51, gen_s_per_image=0.12,
               gen_s_per_image_min=0.11, gen_s_per_image_max=0.13, images_per_s=8.3,
               speedup_vs_1=9.0, speedup_vs_plain=3.0, speedup_vs_first=None,
               peak_memory_added_bytes=2**30, noisy=False,
               tokens_same_as_ours=None)  # fmt: skip
    document = {
        "command": "par bench --arch GPT-3B", "model": "GPT-3B · random weights: speed only",
        "machine": {"gpu": "NVIDIA H200", "torch": "2.11.0"},
        "settings": {"dtype": "bfloat16", "cfg_scale": 1.5, "guided": True, "speedups": []},
        "rows": [row, {**row, "regions": 4, "gen_s_per_image": 0.5},
                 {**row, "regions": 1, "batch": 32, "gen_s_per_image": 0.1}],
    }  # fmt: skip
    path = tmp_path / "bench-3b.json"
    path.write_text(json.dumps({**document, "complete": False, "cases_planned": 6}))
    text = bench_tables(path, tmp_path / "bench-cut-short.json")
    assert "* target n = 16: 120.0 ms per image against 150.0 ms: met" in text
    assert "* target n = 4: 500.0 ms per image against 400.0 ms: missed by 1.25x" in text
    assert "target n = 1:" not in text  # batch 32 is not the target's batch
    assert text.index("target n = 4:") < text.index("target n = 16:")
    assert "NVIDIA H200 · torch 2.11.0 · bfloat16 · guidance 1.5" in text
    assert "bench-cut-short.json: no table (FileNotFoundError" in text
    assert "Cut short: 3 of 6 cases measured." in text


def _is_batches(args: list[str], index: int) -> bool:
    return index > 0 and args[index - 1] == "--batch-size"
