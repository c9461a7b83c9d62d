"""End-to-end runs of `par` with tiny random models."""

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VQ, tiny_model
from typer.testing import CliRunner

import parcli
from parcli.cli import app
from parcli.config import GPT_PRESETS
from parcli.options import RunOptions
from parcli.pipeline import Pipeline
from parcli.sampling import SamplingConfig
from parcli.vq import VQModel

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def generate(files, *args, model="gpt4", tokenizer="vq"):
    return run(
        "generate", "--checkpoint", files[model], "--tokenizer", files[tokenizer], "-q", *args
    )


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in result.output


def test_generate_grid_png_and_tokens(files, tmp_path):
    out, tokens = tmp_path / "grid.png", tmp_path / "t.npy"
    result = generate(files, "-c", 3, "-c", 5, "-n", 2, "-o", out, "--save-tokens", tokens)
    assert result.exit_code == 0, result.output
    import imageio.v3 as iio

    image = iio.imread(out)
    assert image.shape[0] > 16 and image.shape[1] > 16
    ids = np.load(tokens)
    assert ids.shape == (4, 8, 8) and ids.dtype.kind == "i" and ids.max() < 32


@pytest.mark.parametrize("model", ["gpt1", "gpt4", "gpt16"])
def test_directory_output_one_png_each_named_by_class(files, tmp_path, model):
    out = tmp_path / "samples"
    result = generate(files, "-c", 7, "-c", 2, "-n", 2, "-o", f"{out}/", model=model)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["2-s0000.png", "2-s0001.png", "7-s0000.png", "7-s0001.png"]


def test_same_seed_same_tokens(files, tmp_path):
    paths = [tmp_path / f"{i}.npy" for i in range(3)]
    for path, seed in zip(paths, (4, 4, 5), strict=True):
        result = generate(
            files, "-c", 1, "--seed", seed, "-o", tmp_path / "x.png", "--save-tokens", path
        )
        assert result.exit_code == 0, result.output
    a, b, c = (np.load(p) for p in paths)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_progress_and_summary_line(files, tmp_path):
    result = run(
        "generate",
        "--checkpoint",
        files["gpt16"],
        "--tokenizer",
        files["vq"],
        "-c",
        1,
        "-o",
        tmp_path / "a.png",
    )
    assert result.exit_code == 0, result.output
    assert "pass 19/19" in result.output
    assert "1 image · 19 passes each" in result.output


def test_mp4_without_ffmpeg_is_refused_before_generating(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    generated = []
    monkeypatch.setattr(Pipeline, "generate", lambda *a, **k: generated.append(1))
    mp4 = tmp_path / "clip.mp4"
    result = generate(files, "-c", 0, "-o", mp4, model="gpt4video")
    assert_user_error(result, "--output", "imageio-ffmpeg", "pip install imageio-ffmpeg", ".gif")
    result = generate(files, "-c", 0, "-o", f"{tmp_path / 'clips'}/", model="gpt4video")
    assert_user_error(result, "MP4 clips into", "imageio-ffmpeg")
    result = generate(files, "-c", 0, "-o", tmp_path / "x.png", "--animate", mp4)
    assert_user_error(result, "--animate", "imageio-ffmpeg")
    assert generated == [] and list(tmp_path.iterdir()) == []


def test_video_gif_mp4_and_folder_show_the_decoded_frames(files, tmp_path):
    import imageio.v3 as iio

    from parcli.io.checkpoints import load_vq
    from parcli.vq import to_pixels

    gif, mp4, tokens = tmp_path / "clip.gif", tmp_path / "clip.mp4", tmp_path / "t.npy"
    result = generate(files, "-c", 0, "-o", gif, "--save-tokens", tokens, model="gpt4video")
    assert result.exit_code == 0, result.output
    ids = torch.from_numpy(np.load(tokens))
    assert ids.shape == (1, 2, 8, 8)
    vq, _ = load_vq(files["vq"])
    with torch.no_grad():
        expected = to_pixels(vq.decode_codes(ids.reshape(2, 8, 8))).numpy().astype(int)
    frames = iio.imread(gif)[..., :3].astype(int)  # 256 pixels a frame: the palette is exact
    assert frames.shape == (2, 16, 16, 3) and np.abs(frames - expected).max() <= 1

    result = generate(files, "-c", 0, "-o", mp4, model="gpt4video")
    assert result.exit_code == 0, result.output
    frames = iio.imread(mp4).astype(int)  # lossy: each frame is nearer its own than the other
    assert frames.shape == (2, 16, 16, 3)
    for t in range(2):
        own, other = np.abs(frames[t] - expected[t]).mean(), np.abs(frames[t] - expected[1 - t])
        assert own < other.mean()

    folder = tmp_path / "clips"
    result = generate(files, "-c", 0, "-n", 2, "-o", f"{folder}/", model="gpt4video")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == [
        "0-s0000.mp4",
        "0-s0000.mp4.json",  # each clip's recipe
        "0-s0001.mp4",
        "0-s0001.mp4.json",
    ]
    result = generate(files, "-c", 0, "-o", tmp_path / "still.png", model="gpt4video")
    assert_user_error(result, "--output: ", "makes videos", ".mp4 or .gif")


def test_clips_tile_into_one_video_at_the_asked_rate(files, tmp_path, monkeypatch):
    import imageio.v3 as iio

    gif = tmp_path / "four.gif"
    result = generate(files, "-c", 0, "-n", 4, "--fps", 5, "-o", gif, model="gpt4video")
    assert result.exit_code == 0, result.output
    assert iio.imread(gif).shape == (2, 16 * 2 + 2, 16 * 2 + 2, 3)  # 2x2 clips, 2 frames
    assert iio.immeta(gif)["duration"] == 200  # ms a frame at 5 fps
    monkeypatch.chdir(tmp_path)
    result = generate(files, "-c", 0, model="gpt4video")  # no -o: a video's default name
    assert result.exit_code == 0, result.output
    assert iio.imread(tmp_path / "generated.mp4").shape == (2, 16, 16, 3)


def test_image_model_asked_for_a_video_points_at_animate(files, tmp_path):
    result = generate(files, "-c", 0, "-o", tmp_path / "x.mp4")
    assert_user_error(result, "--output: ", "makes images", ".png", "--animate x.mp4")
    result = generate(files, "-c", 0, "--animate", tmp_path / "x.png")
    assert_user_error(result, "--animate: ")


@pytest.mark.parametrize("model, passes", [("gpt1", 64), ("gpt16", 19), ("gpt4video", 35)])
def test_animate_shows_every_pass_and_ends_on_the_picture(files, tmp_path, model, passes):
    import imageio.v3 as iio

    still = tmp_path / ("still.gif" if "video" in model else "still.png")
    anim, with_anim, without = tmp_path / "a.gif", tmp_path / "a.npy", tmp_path / "b.npy"
    args = ("-c", 3, "--seed", 7)
    result = generate(files, *args, "-o", still, "--animate", anim, "--save-tokens", with_anim,
                      model=model)  # fmt: skip
    assert result.exit_code == 0, result.output
    result = generate(files, *args, "-o", still, "--save-tokens", without, model=model)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(with_anim), np.load(without))
    frames = iio.imread(anim)[..., :3]
    assert len(frames) == passes
    final = iio.imread(still)[..., :3]
    if "video" in model:  # a film strip of the clip's frames, over 256 colours: GIF rounds
        final = np.concatenate([final[0], np.zeros((16, 2, 3), np.uint8), final[1]], axis=1)
        assert np.abs(frames[-1].astype(int) - final).mean() < 8
    else:  # 256 pixels: the GIF palette holds them exactly
        np.testing.assert_array_equal(frames[-1], final)
    assert (frames[0] == 128).mean() > 0.9
    from parcli.io.recipe import read_recipe

    assert read_recipe(anim).seed == 7  # the animation carries its recipe, as every output does


def test_class_out_of_range(files, tmp_path):
    out = tmp_path / "x.png"
    assert_user_error(generate(files, "-c", 10, "-o", out), "class 10", "0 to 9")
    assert not out.exists()


def test_regions_the_checkpoint_was_not_trained_for(files, tmp_path):
    result = generate(files, "-c", 1, "--regions", 16, "-o", tmp_path / "x.png")
    assert_user_error(result, "--regions: ", "trained for 4 region(s), not 16", "use 4")


def test_missing_and_corrupt_checkpoint(files, tmp_path):
    result = run(
        "generate",
        "--checkpoint",
        tmp_path / "nope.safetensors",
        "--tokenizer",
        files["vq"],
        "-c",
        1,
        "-o",
        tmp_path / "x.png",
    )
    assert_user_error(result, "nope.safetensors")
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(files["gpt4"].read_bytes()[:5000])
    result = run(
        "generate",
        "--checkpoint",
        corrupt,
        "--tokenizer",
        files["vq"],
        "-c",
        1,
        "-o",
        tmp_path / "x.png",
    )
    assert_user_error(result, "bad.safetensors")


def test_tokenizer_codebook_must_match_vocabulary(files, tmp_path):
    result = generate(files, "-c", 1, "-o", tmp_path / "x.png", tokenizer="vq16")
    assert_user_error(result, "16 codes", "32")


def test_unwritable_output(files, tmp_path):
    result = generate(files, "-c", 1, "-o", tmp_path / "missing" / "x.png")
    assert_user_error(result, "does not exist")
    result = generate(files, "-c", 1, "-o", tmp_path / "x.bmp")
    assert_user_error(result, "--output: ", ".png", ".jpg", ".webp")


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_stills_as_jpeg_and_webp(files, tmp_path, suffix):
    import imageio.v3 as iio

    still, lossless = tmp_path / f"x{suffix}", tmp_path / "x.png"
    for path in (still, lossless):
        result = generate(files, "-c", 1, "-c", 2, "-o", path)
        assert result.exit_code == 0, result.output
    back, exact = iio.imread(still)[..., :3].astype(int), iio.imread(lossless)[..., :3]
    assert back.shape == exact.shape  # random tiny pictures are noise: lossy but recognisable
    assert np.abs(back - exact).mean() < np.abs(back - exact[::-1, ::-1]).mean() / 2


def test_bad_sampling_settings(files, tmp_path):
    assert_user_error(generate(files, "-c", 1, "--top-p", 0, "-o", tmp_path / "x.png"), "top-p")


def test_convert_weights_then_generate(tmp_path, files):
    model = tiny_model(regions=4)
    src = tmp_path / "PAR-tiny.pt"
    torch.save(
        {"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}, "steps": 3}, src
    )
    dst = tmp_path / "tiny.safetensors"
    result = run("convert-weights", src, dst, "--heads", 4, "--grid", "8x8")
    assert result.exit_code == 0, result.output
    assert "regions 4" in result.output
    out = tmp_path / "x.png"
    result = run(
        "generate", "--checkpoint", dst, "--tokenizer", files["vq"], "-c", 2, "-q", "-o", out
    )
    assert result.exit_code == 0, result.output and out.exists()


def test_convert_refuses_garbage(tmp_path):
    src = tmp_path / "junk.pt"
    src.write_text("not a checkpoint")
    assert_user_error(run("convert-weights", src, tmp_path / "x.safetensors"), "junk.pt")
    assert not (tmp_path / "x.safetensors").exists()


def test_bench_on_a_checkpoint_writes_json(files, tmp_path, monkeypatch):
    report = tmp_path / "bench.json"
    args = [
        "bench",
        "--checkpoint",
        files["gpt4"],
        "--tokenizer",
        files["vq"],
        "--regions",
        "4",
        "--repeats",
        1,
        "--warmup",
        0,
        "-v",
        "--json",
        report,
    ]
    monkeypatch.setattr("sys.argv", ["par", *map(str, args)])
    result = run(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    (row,) = data["rows"]
    assert row["regions"] == 4 and row["passes"] == 19 and row["gen_s_per_image"] > 0
    assert row["strategy"] == "par" and row["passes_per_image"] == 19
    assert data["options"]["strategy"] == "par" and data["options"]["window"] == 1
    assert data["machine"]["torch"] == torch.__version__ and data["command"].startswith("par bench")
    # -v prints each case's seconds as it ends, so that a log cut short still holds figures.
    timed = re.search(r"measure 1/1: n=4 b=1 ours: generation ([\d.e+-]+) s, decode ([\d.e+-]+) s",
                      result.output)  # fmt: skip
    assert timed and float(timed[1]) == pytest.approx(row["gen_s_per_image"], rel=0.01)


@pytest.fixture
def tiny_preset(monkeypatch):
    """A published-architecture stand-in small enough to time here: 2 layers, 4 heads, dim 64."""
    from parcli.config import GPT_PRESETS

    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    return "GPT-tiny"


def test_bench_random_architecture_interleaves_and_compares(tmp_path, monkeypatch, tiny_preset):
    import parcli.quality.bench as bench

    order = []
    real = bench.Pipeline.generate

    def spy(self, labels, *args, **kwargs):
        order.append(self.model.cfg.regions)
        return real(self, labels, *args, **kwargs)

    monkeypatch.setattr(bench.Pipeline, "generate", spy)
    report = tmp_path / "b.json"
    result = run(
        "bench",
        "--arch",
        tiny_preset,
        "--grid",
        "8",
        "--repeats",
        2,
        "--warmup",
        1,
        "--no-decode",
        "--json",
        report,
    )
    assert result.exit_code == 0, result.output
    # Each case's warm-up just before its first measurement; the second repeat interleaved.
    assert order == [1, 1, 4, 4, 16, 16] + [1, 4, 16]
    document = json.loads(report.read_text())
    rows = document["rows"]
    assert rows[0]["speedup_vs_1"] == 1.0 and all(r["speedup_vs_1"] > 0 for r in rows)
    assert [r["passes"] for r in rows] == [64, 19, 19]
    assert document["random_weights"] and document["settings"]["grid"] == [8, 8]
    assert document["settings"]["runner"] == "prefix" and not document["settings"]["compile"]
    assert "GPT-tiny · random weights: speed only · grid 8x8" in result.output


def test_bench_baseline_times_a_plain_engine_beside_ours(tmp_path, monkeypatch, tiny_preset):
    import parcli.quality.bench as bench

    order = []
    real = bench.Pipeline.generate

    def spy(self, labels, *args, **kwargs):
        order.append((self.model.cfg.regions, self.plain_engine))
        return real(self, labels, *args, **kwargs)

    monkeypatch.setattr(bench.Pipeline, "generate", spy)
    report = tmp_path / "b.json"
    args = ["bench", "--arch", tiny_preset, "--grid", "8", "--regions", "1,4", "--repeats", 1]
    result = run(*args, "--warmup", 0, "--no-decode", "--baseline", "--json", report)
    assert result.exit_code == 0, result.output
    assert order == [(1, False), (1, True), (4, False), (4, True)]
    rows = json.loads(report.read_text())["rows"]
    assert [(r["regions"], r["engine"]) for r in rows] == [
        (1, "ours"),
        (1, "plain"),
        (4, "ours"),
        (4, "plain"),
    ]
    assert all(r["speedup_vs_plain"] > 0 for r in rows if r["engine"] == "ours")
    assert all(r["speedup_vs_plain"] is None for r in rows if r["engine"] == "plain")
    # float32, tiny model: the plain engine (the reference's kernels) draws every one of our
    # tokens (at full size a last-bit difference can flip a sampled draw: docs/benchmarks.md)
    assert [r["tokens_same_as_ours"] for r in rows] == [None, 1.0, None, 1.0]
    assert "ours vs plain engine" in result.output and "100.0%" in result.output


def test_bench_json_keeps_the_cases_measured_before_a_stop(tmp_path, monkeypatch, tiny_preset):
    # A bench cut short (a GPU check's time limit) still leaves the figures it measured.
    import parcli.quality.bench as bench

    calls, real = [], bench.Pipeline.generate

    def stopped_at_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bench.Pipeline, "generate", stopped_at_the_third)
    report = tmp_path / "b.json"
    args = ["bench", "--arch", tiny_preset, "--grid", "8", "--regions", "1,4,16", "--repeats", 1,
            "--warmup", 0, "--no-decode", "--json", report]  # fmt: skip
    run(*args)
    document = json.loads(report.read_text())
    assert [row["regions"] for row in document["rows"]] == [1, 4]
    assert document["complete"] is False and document["cases_planned"] == 3
    monkeypatch.setattr(bench.Pipeline, "generate", real)
    assert run(*args).exit_code == 0
    document = json.loads(report.read_text())
    assert document["complete"] and len(document["rows"]) == document["cases_planned"] == 3


def test_bench_with_the_reference_kernels_draws_the_plain_engines_bf16_tokens(
    tmp_path, tiny_preset
):
    report = tmp_path / "b.json"
    args = ["bench", "--arch", tiny_preset, "--grid", "8", "--regions", "1,4", "--repeats", 1,
            "--warmup", 0, "--no-decode", "--baseline", "--dtype", "bf16"]  # fmt: skip
    result = run(*args, "--reference-kernels", "--json", report)
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["settings"]["reference_kernels"] and document["settings"]["speedups"] == []
    plain = [r["tokens_same_as_ours"] for r in document["rows"] if r["engine"] == "plain"]
    assert plain == [1.0, 1.0]  # in bf16, where our default kernels draw other tokens
    assert "the reference's kernels" in " ".join(result.output.split())  # the caption wraps


def test_generate_records_the_reference_kernels_and_from_replays_them(files, tmp_path):
    from parcli.io.recipe import read_recipe

    first, again = tmp_path / "a.png", tmp_path / "b.png"
    tokens = [tmp_path / "a.npy", tmp_path / "b.npy"]
    args = ["-c", 1, "-n", 2, "--dtype", "bf16", "--reference-kernels"]
    result = generate(files, *args, "-o", first, "--save-tokens", tokens[0])
    assert result.exit_code == 0, result.output
    assert read_recipe(first).run.reference_kernels
    result = run("generate", "--from", first, "--checkpoint", files["gpt4"], "--tokenizer",
                 files["vq"], "-q", "-o", again, "--save-tokens", tokens[1])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_recipe(again).run.reference_kernels
    assert np.array_equal(np.load(tokens[0]), np.load(tokens[1]))
    result = generate(files, "-c", 1, "--reference-kernels", "--compile", "-o", again)
    assert_user_error(result, "--compile", "--reference-kernels")


def test_from_replays_whether_the_step_was_compiled(files, tmp_path, monkeypatch):
    # In bf16 a compiled step draws other tokens: a recipe says which it was, and --from keeps it.
    import parcli.pipeline as command  # generate imports open_pipeline when it runs
    from parcli.io.recipe import read_recipe

    first = tmp_path / "a.png"
    assert generate(files, "-c", 1, "--no-compile", "-o", first).exit_code == 0
    assert read_recipe(first).run.compile is False
    asked, real = [], command.open_pipeline
    monkeypatch.setattr(
        command, "open_pipeline", lambda *a, **k: asked.append(a[1].compile) or real(*a, **k)
    )
    again = ["generate", "--from", first, "--checkpoint", files["gpt4"], "--tokenizer",
             files["vq"], "-q", "-o", tmp_path / "b.png"]  # fmt: skip
    assert run(*again).exit_code == 0 and asked == [False]
    assert_user_error(run(*again, "--compile"), "--compile", "comes from")
    # A recipe compiled on CUDA, replayed on a CPU: the CPU's default, not minutes of compiling.
    from dataclasses import replace

    made_on_cuda = replace(
        read_recipe(first), run=replace(read_recipe(first).run, device="cuda", compile=True)
    )
    import parcli.io.recipe as recipes

    monkeypatch.setattr(recipes, "read_recipe", lambda path: made_on_cuda)
    assert run(*again).exit_code == 0 and asked == [False, False]  # the CPU's default


def test_bench_times_other_dtypes_and_int8_beside_the_first(tmp_path, monkeypatch, tiny_preset):
    import parcli.quality.bench as bench

    order = []
    real = bench.Pipeline.generate

    def spy(self, labels, *args, **kwargs):
        order.append((self.model.cfg.regions, str(self.model.dtype), self.options.quantize))
        return real(self, labels, *args, **kwargs)

    monkeypatch.setattr(bench.Pipeline, "generate", spy)
    report = tmp_path / "b.json"
    args = ["bench", "--arch", tiny_preset, "--grid", "8", "--regions", "1,4", "--repeats", 1]
    result = run(*args, "--warmup", 0, "--no-decode", "--dtype", "fp32,bf16,fp32",
                 "--quantize", "int8", "--json", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    f32, b16 = "torch.float32", "torch.bfloat16"
    assert order == [
        (n, d, q) for n in (1, 4) for d, q in ((f32, None), (b16, None), (f32, "int8"))
    ]
    document = json.loads(report.read_text())
    rows = document["rows"]
    assert [(r["regions"], r["engine"]) for r in rows] == [
        (n, e) for n in (1, 4) for e in ("ours", "bf16", "int8")
    ]
    assert all((r["speedup_vs_first"] is None) == (r["engine"] == "ours") for r in rows)
    assert all(r["speedup_vs_first"] > 0 for r in rows if r["engine"] != "ours")
    shares = [r["tokens_same_as_ours"] for r in rows if r["engine"] != "ours"]
    assert all(0 <= share <= 1 for share in shares)
    assert all(r["tokens_same_as_ours"] is None for r in rows if r["engine"] == "ours")
    settings = document["settings"]
    assert settings["dtype"] == "float32" and settings["compared_dtypes"] == ["bf16"]
    assert "torch._weight_int8pack_mm" in settings["int8_products"]
    assert "bf16 vs fp32" in result.output and "int8 vs fp32" in result.output
    assert "int8 vs n=1" in result.output  # each engine's own ratio of n = 4 over n = 1


def test_bench_refuses_an_unknown_dtype_in_a_list(tiny_preset):
    result = run("bench", "--arch", tiny_preset, "--dtype", "fp32,fp64")
    assert_user_error(result, "--dtype: unknown dtype 'fp64'")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_on_cpu(files, tmp_path, dtype):
    runs = []
    for name in ("a", "b"):
        tokens = tmp_path / f"{name}.npy"
        args = ("-c", 1, "-c", 2, "--dtype", dtype, "-o", tmp_path / f"{name}.png")
        result = generate(files, *args, "--save-tokens", tokens)
        assert result.exit_code == 0, result.output
        runs.append(np.load(tokens))
    assert runs[0].shape == (2, 8, 8) and runs[0].min() >= 0 and runs[0].max() < 32
    assert np.array_equal(runs[0], runs[1])  # same seed, same device: same tokens
    assert not np.array_equal(runs[0][0], runs[0][1])


def test_several_classes_make_one_row_each(files, tmp_path):
    import imageio.v3 as iio

    args = ("-c", 3, "-c", 5, "-c", 9, "-n", 2, "--seed", 1)
    assert generate(files, *args, "-o", tmp_path / "grid.png").exit_code == 0
    assert generate(files, *args, "-o", f"{tmp_path / 'each'}/").exit_code == 0
    grid = iio.imread(tmp_path / "grid.png")
    assert grid.shape[:2] == (3 * 16 + 2 * 2, 2 * 16 + 2)  # three rows of two, 2 px apart
    singles = [iio.imread(path) for path in sorted((tmp_path / "each").iterdir())]
    for index, single in enumerate(singles):
        row, col = divmod(index, 2)
        assert np.array_equal(grid[row * 18 : row * 18 + 16, col * 18 : col * 18 + 16], single)


def test_version():
    import parcli

    for flag in ("--version", "-V"):
        result = run(flag)
        assert result.exit_code == 0 and result.output.strip() == f"parcli {parcli.__version__}"


def test_the_shipped_video_family_writes_a_playable_clip(tmp_path):
    import imageio.v3 as iio

    clip, tokens = tmp_path / "three.mp4", tmp_path / "t.npy"
    result = run("generate", "--model", "digits-video", "--class", 3, "--regions", 16,
                 "-o", clip, "--save-tokens", tokens, "--scale", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 video · 39 passes each" in result.output
    assert iio.imread(clip).shape == (6, 64, 64, 3)
    assert np.load(tokens).shape == (1, 6, 8, 8)


def test_bench_times_the_video_family_at_every_n(tmp_path, monkeypatch):
    report = tmp_path / "bench.json"
    args = ["bench", "--model", "digits-video", "--regions", "1,4,16", "--repeats", 1,
            "--warmup", 0, "--no-decode", "--json", report]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["par", *map(str, args)])
    result = run(*args)
    assert result.exit_code == 0, result.output
    rows = {row["regions"]: row for row in json.loads(report.read_text())["rows"]}
    assert {n: row["passes"] for n, row in rows.items()} == {1: 384, 4: 99, 16: 39}
    assert rows[1]["speedup_vs_1"] == 1.0 and rows[16]["speedup_vs_1"] > 0


def test_shell_completion_is_offered():
    assert "--install-completion" in run("--help").output
    result = run("--show-completion", "bash")
    assert result.exit_code == 0, result.output
    assert "complete" in result.output and "COMP_WORDS" in result.output


def test_checkpoint_takes_a_published_pt_converted_once(tmp_path, files, monkeypatch):
    monkeypatch.setenv("PARCLI_HOME", str(tmp_path / "home"))
    # A published architecture, so that its heads are known without --heads, but tiny.
    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    model = tiny_model(regions=4, grid=(24, 24))  # published grids are 24x24 (384 px)
    src = tmp_path / "PAR-tiny-4x.pt"
    torch.save({"model": model.state_dict(), "steps": 3}, src)
    before = src.read_bytes()
    converted = tmp_path / "explicit.safetensors"
    assert run("convert-weights", src, converted).exit_code == 0

    def tokens(checkpoint, name):
        out = tmp_path / f"{name}.npy"
        result = run("generate", "--checkpoint", checkpoint, "--tokenizer", files["vq"], "-c", 2,
                     "-q", "-o", tmp_path / f"{name}.png", "--save-tokens", out)  # fmt: skip
        assert result.exit_code == 0, result.output
        return np.load(out)

    expected = tokens(converted, "explicit")
    assert np.array_equal(tokens(src, "direct"), expected)
    (cached,) = (tmp_path / "home" / "converted").glob("PAR-tiny-4x-*.safetensors")
    stamp = cached.stat().st_mtime_ns
    assert np.array_equal(tokens(src, "again"), expected)
    assert cached.stat().st_mtime_ns == stamp  # reused, not converted again
    assert src.read_bytes() == before


def test_converted_and_trained_checkpoints_carry_their_guidance(tmp_path, files):
    # A published file (by name) converts with its catalogue entry's guidance scale ...
    mine = tmp_path / "mine.toml"
    text = (Path(parcli.__file__).parent / "weights.toml").read_text(encoding="utf-8")
    mine.write_text(text.replace('file = "PAR-XL-4x.pt"', 'file = "PAR-tiny-4x.pt"'))
    src = tmp_path / "PAR-tiny-4x.pt"
    torch.save(tiny_model(regions=4).state_dict(), src)
    dst = tmp_path / "tiny.safetensors"
    result = run("convert-weights", src, dst, "--heads", 4, "--grid", 8, "--catalogue", mine)
    assert result.exit_code == 0, result.output
    assert "default guidance 1.5 recorded from the catalogue entry par-xl-4x" in result.output
    out = tmp_path / "x.png"
    result = run("generate", "--checkpoint", dst, "--tokenizer", files["vq"], "-c", 1, "-q",
                 "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    from parcli.io.recipe import read_recipe

    assert read_recipe(out).run.cfg_scale == 1.5
    # ... and without --grid the assumption is said aloud.
    result = run("convert-weights", src, tmp_path / "t2.safetensors", "--heads", 4)
    assert "grid 24x24 assumed" in result.output


def test_a_log_gets_plain_progress_lines(files, tmp_path, monkeypatch):
    import parcli.commands.common as common

    monkeypatch.setattr(common, "PLAIN_PROGRESS_SECONDS", 0.0)
    result = run("generate", "--checkpoint", files["gpt1"], "--tokenizer", files["vq"], "-c", 1,
                 "-o", tmp_path / "x.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "s left" in line]
    assert lines and "gpt1.safetensors: pass " in lines[0] and "%)" in lines[0]


def test_the_bar_says_when_the_first_passes_compile():
    from rich.console import Console
    from rich.progress import Progress

    from parcli.commands.common import pass_counter, waiting_status
    from parcli.plan import Pass

    compiled = Pipeline(
        tiny_model(regions=4), VQModel(TINY_VQ).eval(), options=RunOptions(compile=True)
    )
    eager = Pipeline(
        tiny_model(regions=4), VQModel(TINY_VQ).eval(), options=RunOptions(compile=False)
    )
    assert waiting_status(compiled).startswith("compiling") and waiting_status(eager) == ""
    progress = Progress(console=Console(file=io.StringIO()))
    advance = pass_counter(progress, compiled, batches=1)
    (task,) = progress.tasks
    assert task.fields["status"].startswith("compiling")
    advance(Pass(index=0, start=0, end=1))
    assert task.fields["status"] == f"pass 1/{compiled.plan.num_passes}"


def test_the_bar_says_when_the_first_batch_times_the_int8_products():
    from parcli.commands.common import waiting_status
    from parcli.engine import quantize

    quantize.widening_rows.cache_clear()  # measured by an earlier test, in another cache

    def int8_pipeline():
        return Pipeline(
            tiny_model(regions=4), VQModel(TINY_VQ).eval(), options=RunOptions(quantize="int8")
        )

    first = int8_pipeline()
    assert waiting_status(first).startswith("timing the int8 products")
    first.generate([1], SamplingConfig(), seed=0, batch_size=1)
    assert waiting_status(first) == ""  # its runner exists: nothing more to time
    assert waiting_status(int8_pipeline()) == ""  # remembered in kernels.json
    float_pipe = Pipeline(
        tiny_model(regions=4), VQModel(TINY_VQ).eval(), options=RunOptions(compile=False)
    )
    assert waiting_status(float_pipe) == ""


def test_the_strategy_and_window_are_recorded_and_replayed(files, tmp_path):
    import imageio.v3 as iio

    from parcli.io.recipe import read_recipe

    first = tmp_path / "a.png"
    made = generate(files, "-c", 1, "-n", 2, "--strategy", "sjd", "--window", 3, "-o", first)
    assert made.exit_code == 0, made.output
    recipe = read_recipe(first)
    assert (recipe.run.strategy, recipe.run.window) == ("sjd", 3)
    again = ["generate", "--from", first, "--checkpoint", files["gpt4"], "--tokenizer",
             files["vq"], "-q"]  # fmt: skip
    assert run(*again, "-o", tmp_path / "b.png").exit_code == 0
    np.testing.assert_array_equal(iio.imread(first), iio.imread(tmp_path / "b.png"))
    assert read_recipe(tmp_path / "b.png").run.strategy == "sjd"
    assert_user_error(run(*again, "--window", 2, "-o", tmp_path / "c.png"), "--window: comes from")
    assert_user_error(generate(files, "-c", 1, "--strategy", "jacobi", "-o", tmp_path / "d.png"),
                      "--strategy: ", "par or sjd")  # fmt: skip
