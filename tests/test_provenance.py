"""Every output says how it was made: the PNG chunk, the sidecars, the manifest, `par info` and
`par generate --from`, which makes the same tokens again."""

import json

import numpy as np
import pytest

from parcli.io.media import save_image, save_video
from parcli.io.recipe import Recipe, RecipeError, Sample, read_recipe, sidecar_path
from parcli.options import RunOptions
from tests.test_cli import assert_user_error, generate, run


def _recipe(**changes):
    run = dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, dtype="fp32", device="cpu")
    fields = dict(
        parcli="0.1.0", model="digits-4", checkpoint="gpt-4.safetensors",
        checkpoint_sha256="ab" * 32, tokenizer="vq.safetensors", regions=4, seed=3,
        scale=1, columns=None, fps=None, samples=(Sample(207, "golden retriever", 5),),
    )  # fmt: skip
    run.update({k: v for k, v in changes.items() if k in run})
    fields.update({k: v for k, v in changes.items() if k not in run})
    return Recipe(**fields, run=RunOptions(**run))


def test_png_chunk_and_sidecars_round_trip(tmp_path):
    recipe = _recipe()
    image = np.zeros((4, 4, 3), np.uint8)
    png = save_image(tmp_path / "a.png", image, recipe.to_json())
    assert read_recipe(png) == recipe
    assert not sidecar_path(png).exists()  # a PNG carries its own
    for name in ("a.jpg", "a.webp"):
        path = save_image(tmp_path / name, image, recipe.to_json())
        assert sidecar_path(path).name == f"{name}.json"
        assert read_recipe(path) == recipe
    clip = np.zeros((2, 16, 16, 3), np.uint8)
    gif = save_video(tmp_path / "c.gif", clip, recipe=_recipe(fps=8.0).to_json())
    assert read_recipe(gif).fps == 8.0


@pytest.mark.parametrize(
    "change",
    [
        {"regions": "4"},
        {"regions": True},
        {"regions": 0},
        {"seed": 1.5},
        {"samples": []},
        {"samples": [{"class_id": -1, "index": 0}]},
        {"samples": [{"class_id": 1}]},
        {"samples": "all"},
        {"cfg_scale": None},
    ],
)
def test_a_lying_recipe_is_refused(tmp_path, change):
    data = {**_recipe().to_dict(), **change}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecipeError, match="r.json"):
        read_recipe(path)


def test_files_without_a_recipe(tmp_path):
    (tmp_path / "x.json").write_text("not json")
    (tmp_path / "y.png").write_bytes(b"not a png")
    (tmp_path / "z.mp4").write_bytes(b"")
    for name, message in (
        ("x.json", "not valid JSON"),
        ("y.png", "not a readable PNG"),
        ("z.mp4", "z.mp4.json"),
        ("missing.png", "does not exist"),
    ):
        assert_user_error(run("info", tmp_path / name), message)


def test_from_makes_the_same_tokens(files, tmp_path):
    grid, ids = tmp_path / "grid.png", tmp_path / "a.npy"
    result = generate(files, "-c", 3, "-c", 5, "-n", 2, "--seed", 7, "-o", grid,
                      "--save-tokens", ids, "--json", tmp_path / "run.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    recipe = read_recipe(grid)
    assert [(s.class_id, s.index) for s in recipe.samples] == [(3, 0), (3, 1), (5, 2), (5, 3)]
    assert recipe.model is None and recipe.seed == 7 and recipe.columns == 2
    assert read_recipe(tmp_path / "run.json") == recipe

    again = tmp_path / "again.npy"
    result = generate(files, "--from", grid, "-o", tmp_path / "b.png", "--save-tokens", again)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(ids), np.load(again))

    folder = tmp_path / "each"
    result = generate(files, "-c", 3, "-c", 5, "-n", 2, "--seed", 7, "-o", f"{folder}/")
    assert result.exit_code == 0, result.output
    one = tmp_path / "one.npy"
    result = generate(files, "--from", folder / "5-s0001.png", "-o", tmp_path / "c.png",
                      "--save-tokens", one)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(ids)[3], np.load(one)[0])  # sample #3 alone, same tokens


def test_from_refuses_what_it_cannot_honour(files, tmp_path):
    grid = tmp_path / "grid.png"
    assert generate(files, "-c", 3, "-o", grid).exit_code == 0
    assert_user_error(generate(files, "--from", grid, "-c", 4), "--class: comes from")
    assert_user_error(generate(files, "--from", grid, "--seed", 1), "--seed: comes from")
    other = generate(files, "--from", grid, "-o", tmp_path / "x.png", model="gpt16")
    assert_user_error(other, "gpt16.safetensors is not the checkpoint the samples were made with")
    alone = run("generate", "--from", grid, "-o", tmp_path / "x.png")
    assert_user_error(alone, "--from: ", "give it again with --checkpoint")


def test_par_info_prints_the_recipe_and_the_command(files, tmp_path):
    clip = tmp_path / "clip.mp4"
    result = generate(files, "-c", 1, "-o", clip, model="gpt4video")
    assert result.exit_code == 0, result.output
    result = run("info", clip)
    assert result.exit_code == 0, result.output
    assert "gpt4video.safetensors" in result.output and "8 fps" in result.output
    assert "par generate --from" in result.output
    result = run("info", clip, "--json")
    assert json.loads(result.output)["samples"] == [{"class_id": 1, "class_name": "1", "index": 0}]


def test_a_folder_never_mixes_two_runs(files, tmp_path):
    folder = tmp_path / "out"
    assert generate(files, "-c", 1, "-n", 2, "-o", f"{folder}/").exit_code == 0
    (folder / "notes.txt").write_text("mine")
    result = generate(files, "-c", 2, "-o", f"{folder}/")
    assert_user_error(result, "--output: ", "holds 2 files of an earlier run (1-s0000.png, ",
                      "--overwrite")  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["1-s0000.png", "1-s0001.png", "notes.txt"]
    result = generate(files, "-c", 2, "-o", f"{folder}/", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["2-s0000.png", "notes.txt"]
    clips = tmp_path / "clips"
    assert generate(files, "-c", 0, "-o", f"{clips}/", model="gpt4video").exit_code == 0
    result = generate(files, "-c", 1, "-o", f"{clips}/", model="gpt4video")
    assert_user_error(result, "holds 2 files of an earlier run (0-s0000.mp4, 0-s0000.mp4.json)")


@pytest.mark.parametrize(("signal_error", "code", "word"), [("int", 130, "interrupted"),
                                                          ("term", 143, "terminated")])  # fmt: skip
def test_an_interrupted_folder_says_how_many_files_are_complete(tmp_path, capsys, signal_error,
                                                                code, word):  # fmt: skip
    from parcli.errors import Terminated
    from parcli.io.outputs import counted_on_interruption

    folder = tmp_path / "out"
    folder.mkdir()
    stems = [f"1-s{i:04d}" for i in range(5)]
    for stem in stems[:2]:
        (folder / f"{stem}.png").write_bytes(b"x")
    error = KeyboardInterrupt() if signal_error == "int" else Terminated()
    with pytest.raises(SystemExit) as info, counted_on_interruption(f"{folder}/", stems, False):
        raise error
    assert info.value.code == code
    assert f"{word}: 2 of 5 files written to {folder}/" in capsys.readouterr().err


def test_a_recipe_from_before_quantize_existed_still_reads(tmp_path):
    data = _recipe().to_dict()
    del data["quantize"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert read_recipe(path).run.quantize is None


def test_a_recipe_from_before_reference_kernels_existed_reads_as_without():
    data = json.loads(_recipe().to_json())
    del data["reference_kernels"]
    assert not Recipe.from_dict(data, "old.json").run.reference_kernels
    with pytest.raises(RecipeError, match="reference_kernels"):
        Recipe.from_dict({**data, "reference_kernels": "yes"}, "odd.json")


def test_a_recipe_from_before_compiled_existed_leaves_it_to_the_device():
    data = json.loads(_recipe().to_json())
    del data["compiled"]
    assert Recipe.from_dict(data, "old.json").run.compile is None
    assert Recipe.from_dict({**data, "compiled": True}, "new.json").run.compile is True
    with pytest.raises(RecipeError, match="compiled"):
        Recipe.from_dict({**data, "compiled": 1}, "odd.json")


HOSTILE_TEXT = "x\x1b]0;owned\x07\x1b[2J\r\n$ rm -rf ~\x9b31m\u202e\u2028"


def test_par_info_prints_a_hostile_recipes_text_inert(tmp_path):
    from parcli.commands.common import inert
    from parcli.commands.info import recipe_lines

    assert inert("a\x1b[1mb\nc\x9b\u202e") == "a\\x1b[1mb\\x0ac\\x9b\\u202e"
    recipe = _recipe(
        model=HOSTILE_TEXT, checkpoint=HOSTILE_TEXT, tokenizer=HOSTILE_TEXT, parcli=HOSTILE_TEXT,
        samples=(Sample(207, HOSTILE_TEXT, 5),),
    )  # fmt: skip
    png = save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8), recipe.to_json())
    for args in ((), ("--json",)):
        result = run("info", png, *args)
        assert result.exit_code == 0, result.output
        assert not any(
            ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 or c in "\u202e\u2028"
            for c in result.output
        ), repr(result.output)
        assert "$ rm -rf ~" not in result.output.splitlines()
    assert json.loads(result.output)["model"] == HOSTILE_TEXT
    lines = run("info", png).output.splitlines()
    assert len(lines) == len(recipe_lines(recipe)) + 1
    assert "\\x1b]0;owned" in lines[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"parcli": ' * 50_000 + "1" + "}" * 50_000, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (json.dumps({**_recipe().to_dict(), "scale": 17}), "'scale' must lie in 1 to 16"),
        (json.dumps({**_recipe().to_dict(), "scale": 10**30}), "'scale' must lie in 1 to 16"),
        (json.dumps({**_recipe().to_dict(), "columns": 0}), "'columns' must lie in 1"),
        (json.dumps({**_recipe().to_dict(), "fps": 0.01}), "'fps' must lie in 0.1 to 120"),
        (json.dumps({**_recipe().to_dict(), "fps": 1e9}), "'fps' must lie in 0.1 to 120"),
        (json.dumps({**_recipe().to_dict(), "fps": float("nan")}), "'fps' must lie"),
        (json.dumps({**_recipe().to_dict(), "cfg_scale": float("inf")}), "not a finite"),
        (json.dumps({**_recipe().to_dict(), "top_p": float("nan")}), "not a finite"),
        (
            json.dumps({**_recipe().to_dict(), "samples": [{"class_id": 0, "index": 0}] * 100_001}),
            "'samples' must list",
        ),
    ],
)
def test_a_recipe_past_the_command_lines_bounds_is_one_line(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    result = run("info", path)
    assert_user_error(result, message)


def test_a_users_file_with_a_name_par_would_write_is_never_replaced(files, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    mine = folder / "3-s0000.png"
    mine.write_bytes(b"my own picture")
    for extra in ((), ("--overwrite",)):
        result = generate(files, "-c", 3, "-o", f"{folder}/", *extra)
        assert_user_error(result, "--output: ", "3-s0000.png", "cannot tell it wrote it")
        assert mine.read_bytes() == b"my own picture"


def test_overwrite_deletes_only_what_par_can_prove_it_wrote(files, tmp_path):
    folder = tmp_path / "clips"
    assert generate(files, "-c", 0, "-o", f"{folder}/", model="gpt4video").exit_code == 0
    # A user's file beside a JSON that merely looks like a recipe is not ours.
    (folder / "notes.txt").write_text("mine")
    (folder / "notes.txt.json").write_text(json.dumps({"parcli": "0.1.0"}))
    # Nor is a clip whose sidecar's sha256 does not match it (the user changed the file).
    (folder / "0-s0000.mp4").write_bytes(b"edited by the user")
    result = generate(files, "-c", 1, "-o", f"{folder}/", "--overwrite", model="gpt4video")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["0-s0000.mp4", "1-s0000.mp4", "1-s0000.mp4.json", "notes.txt",
                     "notes.txt.json"]  # fmt: skip
    assert (folder / "0-s0000.mp4").read_bytes() == b"edited by the user"


def test_a_read_only_file_is_not_replaced(files, tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    assert_user_error(generate(files, "-c", 1, "-o", target), "--output: ", "read-only")
    assert target.read_bytes() == b"keep me"


def test_a_folder_fills_as_batches_end_and_the_same_command_finishes_it(files, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    from parcli.io.outputs import Outputs

    folder = tmp_path / "out"
    args = ("-c", 2, "-n", 4, "--batch-size", 2, "-o", f"{folder}/")
    real, calls = Outputs.write_batch, []

    def cut_after_one_batch(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Outputs, "write_batch", cut_after_one_batch)
    result = generate(files, *args)
    assert result.exit_code == 130
    assert (
        "2 of 4 files written" in result.output
        and "the same command makes the rest" in result.output
    )
    assert sorted(p.name for p in folder.iterdir()) == ["2-s0000.png", "2-s0001.png"]
    first = (folder / "2-s0000.png").read_bytes()
    monkeypatch.setattr(Outputs, "write_batch", real)
    result = generate(files, *args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == [f"2-s000{i}.png" for i in range(4)]
    assert (folder / "2-s0000.png").read_bytes() == first  # kept, not made again
    whole = tmp_path / "whole"
    assert generate(files, "-c", 2, "-n", 4, "-o", f"{whole}/").exit_code == 0
    for i in range(4):  # the same images as a run never cut short
        name = f"2-s000{i}.png"
        assert (whole / name).read_bytes() == (folder / name).read_bytes()


def test_samples_that_cannot_fit_the_disk_are_refused_before_any_work(files, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    import parcli.io.outputs as outputs

    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 1000)
    for target in (f"{tmp_path / 'out'}/", tmp_path / "x.png"):
        result = generate(files, "-c", 1, "-n", 4, "-o", target)
        assert_user_error(result, "--output: ", "GB free")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
