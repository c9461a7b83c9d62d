"""Every numeric option of every command, fed extreme and random values: one line, exit code 2,
no traceback, nothing written.

Each command gets arguments that make it stop cheaply after its checks (a file that does not
exist, a model the catalogue lacks, a folder that cannot be written), so a value it accepts ends
in one refusal too, and a value it should refuse must be refused in the same form."""

import random

import typer
from typer.testing import CliRunner

from parcli.cli import app

runner = CliRunner()

EXTREMES = ["-1", "0", "nan", "inf", "-inf", "1e400", str(2**63), "9" * 40, "abc", ""]


def bases(tmp):
    missing = str(tmp / "missing")
    blocked = str(tmp / "no-such-folder" / "x")
    return {
        ("generate",): ["-m", "no-such-model", "-c", "1", "-o", f"{blocked}.png"],
        ("bench",): ["--checkpoint", f"{missing}.safetensors", "--tokenizer", missing],
        ("sample",): ["--checkpoint", f"{missing}.safetensors", "-o", blocked],
        ("eval",): ["-m", "no-such-model"],
        ("fid",): [f"{missing}.npz", f"{missing}2.npz"],
        ("convert-weights",): [f"{missing}.pt", f"{blocked}.safetensors"],
        ("train", "vq"): ["-o", f"{blocked}.safetensors", "--data", missing],
        ("train", "gpt"): [
            "-o",
            f"{blocked}.safetensors",
            "--tokenizer",
            missing,
            "--data",
            missing,
        ],  # fmt: skip
        ("train", "classifier"): ["-o", f"{blocked}.txt"],
        ("weights", "fetch"): ["no-such-model", "--offline"],
    }


def numeric_options(path):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    for param in command.params:
        numeric = param.bare_type() in ("int", "float")
        if numeric and param.opts and not getattr(param, "hidden", False):
            yield max(param.opts, key=len)


def test_every_numeric_option_of_every_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PARCLI_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    tried = 0
    for path, base in bases(tmp_path).items():
        options = list(numeric_options(path))
        assert options or path == ("weights", "fetch"), path
        for option in options:
            values = rng.sample(EXTREMES, 4) + [str(rng.randint(-(2**40), 2**40))]
            for value in values:
                result = runner.invoke(app, [*path, *base, option, value])
                tried += 1
                lines = [line for line in result.output.splitlines() if line.strip()]
                context = (path, option, value, result.output)
                assert result.exit_code == 2, context
                assert "Traceback" not in result.output, context
                assert len(lines) == 1 and lines[0].startswith("error:"), context
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    print(f"\nnumeric option values tried: {tried}")
