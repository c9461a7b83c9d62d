"""`par sample`: the same bytes however the work is batched, split, interrupted and resumed."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VQ, tiny_model
from typer.testing import CliRunner

from parcli.cli import app
from parcli.commands.common import parse_classes
from parcli.errors import SettingError
from parcli.io.checkpoints import save_checkpoint
from parcli.io.npz import Member, write_arrays, write_npz
from parcli.vq import VQModel, to_pixels

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-models")
    torch.manual_seed(0)
    save_checkpoint(root / "vq.safetensors", VQModel(TINY_VQ).state_dict(), "vq", TINY_VQ)
    model = tiny_model(regions=4)
    save_checkpoint(root / "gpt.safetensors", model.state_dict(), "gpt", model.cfg)
    return root / "gpt.safetensors", root / "vq.safetensors"


def sample(files, out, *args):
    checkpoint, tokenizer = files
    arguments = ["sample", "--checkpoint", checkpoint, "--tokenizer", tokenizer, "--out", out]
    result = runner.invoke(app, [str(a) for a in [*arguments, "-q", *args]])
    return result


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


BASE = ("--per-class", 3, "--classes", "0-2,7", "--seed", 5, "--batch-size", 2, "--shard-size", 5)


def test_samples_npz_is_the_adm_format_with_a_manifest(files, tmp_path):
    out = tmp_path / "run"
    result = sample(files, out, *BASE, "--cfg-scale", 1.5)
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as data:
        assert sorted(data.keys()) == ["arr_0", "labels"]
        images, labels = data["arr_0"], data["labels"]
    assert images.shape == (12, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 7, 7, 7]
    assert len({image.tobytes() for image in images}) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    assert settings["checkpoint_sha256"] == digest(files[0])
    sampling = {key: settings[key] for key in ("cfg_scale", "temperature", "top_k", "top_p")}
    assert sampling == {"cfg_scale": 1.5, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert settings["classes"] == [0, 1, 2, 7] and settings["per_class"] == 3
    assert manifest["samples_sha256"] == digest(out / "samples.npz")
    assert manifest["processes"] == 1 and manifest["parcli"] and manifest["machine"]["torch"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        f"{n:05d}.{kind}" for n in range(3) for kind in ("json", "npz")
    ]


def test_an_image_does_not_depend_on_batching_or_sharding(files, tmp_path):
    runs = []
    for batch, shard in ((1, 1000), (2, 5), (5, 3)):
        out = tmp_path / f"b{batch}-s{shard}"
        args = ("--per-class", 3, "--classes", "0-2,7", "--seed", 5)
        result = sample(files, out, *args, "--batch-size", batch, "--shard-size", shard)
        assert result.exit_code == 0, result.output
        runs.append((out / "samples.npz").read_bytes())
    assert runs[0] == runs[1] == runs[2]


def test_an_interrupted_or_damaged_run_resumes_to_the_same_bytes(files, tmp_path):
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    expected = digest(out / "samples.npz")
    shards = out / "shards"
    (out / "samples.npz").unlink()
    (out / "manifest.json").unlink()
    (shards / "00001.npz").unlink()  # killed before this shard landed
    damaged = shards / "00002.npz"
    damaged.write_bytes(damaged.read_bytes()[:-7] + b"garbage")  # a disk that lied
    kept = (shards / "00000.npz").stat().st_mtime_ns
    result = sample(files, out, *BASE)
    assert result.exit_code == 0, result.output
    assert digest(out / "samples.npz") == expected
    assert (shards / "00000.npz").stat().st_mtime_ns == kept  # a good shard is not made again
    assert "shard 1/3" not in result.output and "shard 2/3" in result.output


def test_a_share_left_by_a_dead_process_is_finished_by_the_next_run(files, tmp_path):
    from parcli.io.locate import ModelFiles
    from parcli.pipeline import load_pipeline
    from parcli.quality.ranks import Ranks
    from parcli.quality.shards import SampleSettings, start_run

    out, fresh = tmp_path / "run", tmp_path / "fresh"
    assert sample(files, fresh, *BASE).exit_code == 0
    pipe = load_pipeline(*files, torch.device("cpu"), torch.float32)
    settings = SampleSettings((0, 1, 2, 7), 3, seed=5, batch_size=2, shard_size=5)
    run, _ = start_run(out, pipe, settings, ModelFiles("tiny", *files, None), Ranks())
    run.run(run.todo(rank=1, world=2))  # rank 1 of 2 finished its share; rank 0 died
    assert [s.number for s in run.todo()] == [0, 2]
    result = sample(files, out, *BASE)
    assert result.exit_code == 0, result.output
    assert "shard 2/3" not in result.output
    assert digest(out / "samples.npz") == digest(fresh / "samples.npz")


def test_another_run_in_the_same_folder_is_refused_and_nothing_overwritten(files, tmp_path):
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = sample(files, out, *BASE[:-2], "--shard-size", 4, "--seed", 6)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--output:" in lines[0] and "seed, shard_size" in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    again = sample(files, out, *BASE)
    assert again.exit_code == 0 and "is complete already" in " ".join(again.output.split())
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = sample(files, tmp_path / "other", *BASE)
    assert result.exit_code == 2 and "holds no par sample run" in result.output
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_a_run_is_not_resumed_with_other_numerics(files, tmp_path):
    # int8 weights or the reference's kernels draw other tokens: shards of both must not mix.
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    for other, key in (
        (["--quantize", "int8"], "quantize"),
        (["--reference-kernels"], "reference_kernels"),
    ):
        result = sample(files, out, *BASE, *other)
        assert result.exit_code == 2 and f"other settings ({key})" in result.output, other
    fresh = tmp_path / "int8"
    assert sample(files, fresh, *BASE, "--quantize", "int8").exit_code == 0
    settings = json.loads((fresh / "run.json").read_text())
    assert settings["quantize"] == "int8" and settings["reference_kernels"] is False
    assert json.loads((out / "run.json").read_text())["quantize"] is None


def test_pngs_and_the_evaluation_size(files, tmp_path):
    from parcli.io.checkpoints import load_vq
    from parcli.pipeline import load_pipeline

    out = tmp_path / "run"
    result = sample(
        files, out, "--per-class", 1, "--classes", "3-4", "--png", "--image-size-eval", 24
    )
    assert result.exit_code == 0, result.output
    import imageio.v3 as iio

    with np.load(out / "samples.npz") as data:
        images = data["arr_0"]
    assert images.shape == (2, 24, 24, 3)
    assert [iio.imread(out / "png" / f"{i:06d}.png").tobytes() for i in range(2)] == [
        image.tobytes() for image in images
    ]
    # The same tokens, decoded and resized (bicubic, before rounding) here, give these pixels.
    pipe = load_pipeline(*files, torch.device("cpu"), torch.float32)
    tokens = pipe.generate([3, 4], pipe.sampling(), seed=0, batch_size=2, indices=[3, 4])
    vq, _ = load_vq(files[1])
    with torch.no_grad():
        decoded = F.interpolate(vq.decode_codes(tokens), size=(24, 24), mode="bicubic")
    expected = to_pixels(decoded).numpy().astype(int)
    assert np.abs(images.astype(int) - expected).max() <= 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")
def test_two_processes_write_the_bytes_of_one(tmp_path):
    args = ["--model", "digits", "--regions", "4", "--per-class", "2", "--classes", "0-5"]
    args += ["--batch-size", "3", "--shard-size", "4", "-q"]
    one = subprocess.run(
        [sys.executable, "-m", "parcli", "sample", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "parcli", "sample", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert digest(tmp_path / "one" / "samples.npz") == digest(tmp_path / "two" / "samples.npz")


def test_class_lists():
    assert parse_classes("0-3,7,2", 10) == (0, 1, 2, 3, 7)
    assert parse_classes(None, 4) == (0, 1, 2, 3)
    for wrong in ("3-1", "a", "", "0-10"):
        with pytest.raises(SettingError):
            parse_classes(wrong, 10)


def test_npz_files_are_the_same_bytes_every_time_and_stream_in_chunks(tmp_path):
    images = np.arange(4 * 3 * 2 * 3, dtype=np.uint8).reshape(4, 3, 2, 3)
    labels = np.array([3, 1, 4, 1])
    write_arrays(tmp_path / "a.npz", {"arr_0": images, "labels": labels})
    chunks = [images[:1], images[1:3], images[3:]]
    members = {"arr_0": Member(images.shape, images.dtype, chunks)}
    members["labels"] = Member(labels.shape, labels.dtype, [labels])
    write_npz(tmp_path / "b.npz", members)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "b.npz") as data:
        assert np.array_equal(data["arr_0"], images) and np.array_equal(data["labels"], labels)
    short = {"arr_0": Member(images.shape, images.dtype, chunks[:2])}
    with pytest.raises(ValueError, match="bytes of data"):
        write_npz(tmp_path / "c.npz", short)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]


def one_line_refusal(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, result.output


def test_a_damaged_samples_npz_or_manifest_is_merged_again(files, tmp_path):
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    expected = digest(out / "samples.npz")
    target = out / "samples.npz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    result = sample(files, out, *BASE)
    assert result.exit_code == 0 and "complete already" not in result.output, result.output
    assert digest(target) == expected
    for manifest in ("[1, 2]", "{", '{"samples_sha256": 5}'):
        (out / "manifest.json").write_text(manifest)
        result = sample(files, out, *BASE)
        assert result.exit_code == 0 and "complete already" not in result.output, result.output
        assert digest(target) == expected
        assert json.loads((out / "manifest.json").read_text())["samples_sha256"] == expected


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b"5", b"null", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", b'"run"'],
)
def test_a_malformed_run_json_is_one_line(files, tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_bytes(content)
    result = sample(files, out, *BASE)
    one_line_refusal(result, "is not a par sample run record")
    assert [p.name for p in out.iterdir()] == ["run.json"]
    assert (out / "run.json").read_bytes() == content


def test_a_shard_with_the_wrong_arrays_is_made_again_not_cast(files, tmp_path):
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    expected = digest(out / "samples.npz")
    shards = out / "shards"
    wrong = {
        "00000": lambda d: {**d, "images": d["images"].astype(np.float32)},
        "00001": lambda d: {**d, "images": d["images"][:, :8]},
        "00002": lambda d: {**d, "labels": d["labels"] + 1},
    }
    for stem, change in wrong.items():
        with np.load(shards / f"{stem}.npz") as data:
            arrays = change({key: data[key] for key in data})
        write_arrays(shards / f"{stem}.npz", arrays)  # a record that vouches for it, too
        record = json.loads((shards / f"{stem}.json").read_text())
        record["sha256"] = digest(shards / f"{stem}.npz")
        (shards / f"{stem}.json").write_text(json.dumps(record))
    (out / "samples.npz").unlink()
    result = sample(files, out, *BASE)
    assert result.exit_code == 0, result.output
    assert all(f"shard {n}/3" in result.output for n in (1, 2, 3)), result.output
    assert digest(out / "samples.npz") == expected


def test_a_resumed_run_removes_what_a_killed_run_left_half_written(files, tmp_path):
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    (out / "shards" / "00001.npz").unlink()
    left = [out / ".samples.tmp-0123abcd.npz", out / "shards" / ".00001.tmp-deadbeef.npz"]
    for path in left:
        path.write_bytes(b"half")
    result = sample(files, out, *BASE)
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in left)


def test_counts_and_sizes_that_cannot_be_are_refused_before_run_json(files, tmp_path, monkeypatch):
    import parcli.quality.shards as shards_module

    out = tmp_path / "run"
    result = sample(files, out, *BASE[2:], "--per-class", 99999999999999)
    one_line_refusal(result, "--per-class:", "ask for fewer")
    for size in (0, 100_000):
        result = sample(files, out, *BASE, "--image-size-eval", size)
        one_line_refusal(result, "--image-size-eval:", "between 1 and 4096")
    assert not out.exists()
    real = shards_module.free_bytes
    monkeypatch.setattr(shards_module, "free_bytes", lambda folder: 1000)
    result = sample(files, out, *BASE)
    one_line_refusal(result, "--output:", "GB free")
    assert not out.exists()
    monkeypatch.setattr(shards_module, "free_bytes", real)
    assert sample(files, out, *BASE).exit_code == 0


def test_a_run_is_not_resumed_with_another_strategy(files, tmp_path):
    out = tmp_path / "run"
    assert sample(files, out, *BASE).exit_code == 0
    result = sample(files, out, *BASE, "--strategy", "sjd")
    assert result.exit_code == 2 and "other settings (strategy, window)" in result.output
