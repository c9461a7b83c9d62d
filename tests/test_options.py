"""One name per idea across commands: the same options, help and defaults everywhere, and the
old spellings still accepted though no longer shown."""

import re

import pytest
import typer.main
from typer.testing import CliRunner

from parcli.cli import app

runner = CliRunner()


def commands(command=None, path=()):
    """(path, command) of every leaf command of `par`."""
    command = command or typer.main.get_command(app)
    for name, sub in getattr(command, "commands", {}).items():
        if hasattr(sub, "commands"):
            yield from commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def options(command):
    return [p for p in command.params if p.param_type_name == "option"]


def names(option):
    return {*option.opts, *option.secondary_opts}


def test_every_shown_option_has_help_and_no_default_written_in_it():
    for path, command in commands():
        for option in options(command):
            if option.hidden:
                continue
            where = f"par {' '.join(path)} {option.opts[0]}"
            assert option.help, f"{where} has no help"
            # Typer shows a default as [default: ...]; a default decided later is said in words.
            written = re.search(r"\bdefault:|\(default\b|\bdefault \d", option.help, re.I)
            assert not written, f"{where}: {option.help}"


def test_one_name_for_outputs_samples_per_class_and_device():
    seen = {}
    for path, command in commands():
        shown = {name for option in options(command) if not option.hidden for name in names(option)}
        hidden = {name for option in options(command) if option.hidden for name in names(option)}
        seen[" ".join(path)] = shown
        assert not shown & {"--out", "--num-samples", "--samples-per-class"}, path
        assert hidden <= {"--out", "--num-samples", "--samples-per-class"}, path
        for option in options(command):
            if "--device" in names(option):
                assert option.default == "auto", path
    for path in ("generate", "sample", "train vq", "train gpt", "train classifier"):
        assert {"-o", "--output"} <= seen[path], path
    for path in ("generate", "sample", "eval"):
        assert "--per-class" in seen[path], path
    assert "-n" in seen["generate"]
    assert "--device" in seen["train vq"] and "--device" in seen["train gpt"]


def test_batch_size_means_the_same_wherever_images_are_generated():
    helps = {
        path: option.help
        for path, command in commands()
        for option in options(command)
        if "--batch-size" in names(option) and path[0] in ("generate", "sample", "eval", "bench")
    }
    assert len(helps) == 4
    assert all(text.startswith("Images generated together") for text in helps.values()), helps


def test_help_shows_the_new_names_only():
    assert "--per-class" in runner.invoke(app, ["generate", "--help"]).output
    for args in (["generate"], ["eval"], ["sample"], ["train", "vq"], ["train", "classifier"]):
        output = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).output
        for old in ("--out ", "--num-samples", "--samples-per-class"):
            assert old not in output, (args, old)


@pytest.mark.parametrize("flag", ["--per-class", "-n", "--num-samples"])
def test_generate_takes_samples_per_class_by_any_spelling(flag):
    # Refused before any model is loaded: the value reached the setting, under its new name.
    result = runner.invoke(app, ["generate", "-c", "1", flag, "0"])
    assert result.exit_code == 2, result.output
    assert "-n/--per-class: must be at least 1, not 0" in result.output


def test_an_old_and_a_new_spelling_together_are_refused(tmp_path):
    result = runner.invoke(app, ["generate", "-c", "1", "-n", "2", "--num-samples", "3"])
    assert result.exit_code == 2
    assert "--num-samples is the old name of -n/--per-class" in result.output


@pytest.mark.parametrize("spelling", ["-o", "--output", "--out"])
@pytest.mark.parametrize("command", [["train", "vq"], ["train", "classifier"]])
def test_training_writes_to_output_by_any_spelling(tmp_path, spelling, command):
    # A .png is refused before any training: the path reached the setting, under its new name.
    result = runner.invoke(app, [*command, spelling, str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert "--output: cannot write" in result.output and ".png" in result.output


def test_a_required_output_is_still_required():
    result = runner.invoke(app, ["train", "vq"])
    assert result.exit_code == 2
    assert "missing option -o/--output" in result.output
    assert "[required]" in runner.invoke(app, ["sample", "--help"]).output
