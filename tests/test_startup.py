"""`par --help`, `par --version` and every `par <command> --help` start fast: nothing heavy is
imported to parse a command line (torch alone takes seconds)."""

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "numpy", "PIL", "safetensors", "huggingface_hub", "imageio")

# Runs in a fresh interpreter: the test process has torch loaded already.
HELP_EVERYWHERE = """
import sys
import click
import typer.main
from typer.testing import CliRunner
from parcli.cli import app

runner = CliRunner()
paths = [["--version"], ["--help"]]

def walk(command, prefix):
    for name, sub in getattr(command, "commands", {}).items():
        paths.append([*prefix, name, "--help"])
        walk(sub, [*prefix, name])

walk(typer.main.get_command(app), [])
for args in paths:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(len(paths))
print(" ".join(name for name in HEAVY if name in sys.modules))
"""


def test_help_and_version_import_nothing_heavy():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + HELP_EVERYWHERE],
        capture_output=True, text=True, cwd=root, timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "100"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    count, imported = (done.stdout.splitlines() + [""])[:2]
    assert int(count) > 10  # the root, its commands and the train and weights groups
    assert imported == "", f"--help imported {imported}"


def test_the_executable_imports_nothing_heavy_for_help():
    # `python -m parcli` (the `par` script's path): its signal set-up and the CLI's imports.
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "parcli", "generate", "--help"],
        capture_output=True, text=True, cwd=root, timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "parcli.cli" in imported
    assert not imported & set(HEAVY)
