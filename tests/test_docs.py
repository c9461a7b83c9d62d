"""docs/cli.md is Typer's reference of every command and option, generated from the CLI itself:
a change to an option's name, help or default must come with the regenerated file."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current(tmp_path):
    fresh = tmp_path / "cli.md"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "typer",
            "parcli.cli",
            "utils",
            "docs",
            "--name",
            "par",
            "--output",
            str(fresh),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    current = (ROOT / "docs" / "cli.md").read_text()
    assert fresh.read_text() == current, "docs/cli.md is out of date: run `make docs`"
