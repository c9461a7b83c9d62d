"""FID's bookkeeping offline: a small stand-in network replaces Inception-v3."""

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from parcli.cli import app
from parcli.io.npz import write_arrays
from parcli.quality import fid as fid_module
from parcli.quality.fid import FidError, fid, statistics

runner = CliRunner()


def stand_in(images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of uint8 images (N, 3, H, W): 6 features."""
    x = images.double() / 255
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def images(count: int, seed: int, brightness: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 200, (count, 8, 8, 3)) + brightness).astype(np.uint8)


def test_statistics_stream_the_images_through_the_network(tmp_path):
    pictures = images(23, 0)
    write_arrays(tmp_path / "a.npz", {"arr_0": pictures, "labels": np.arange(23)})
    seen = []
    mu, sigma, count = statistics(tmp_path / "a.npz", stand_in, 5, lambda d, n: seen.append(n))
    features = stand_in(torch.from_numpy(pictures).permute(0, 3, 1, 2)).numpy()
    assert count == 23 and seen == [5, 5, 5, 5, 3]
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)


def test_fid_against_images_and_against_stored_statistics(tmp_path):
    write_arrays(tmp_path / "a.npz", {"arr_0": images(40, 1)})
    write_arrays(tmp_path / "same.npz", {"arr_0": images(40, 1)})
    write_arrays(tmp_path / "bright.npz", {"arr_0": images(40, 1, brightness=40)})
    assert fid(tmp_path / "a.npz", tmp_path / "same.npz", stand_in)["fid"] == pytest.approx(
        0, abs=1e-9
    )
    shifted = fid(tmp_path / "a.npz", tmp_path / "bright.npz", stand_in)
    # Brighter by 40 levels moves the three means by 40/255 and leaves the spread alone.
    assert shifted["fid"] == pytest.approx(3 * (40 / 255) ** 2, rel=1e-6)
    mu, sigma, _ = statistics(tmp_path / "bright.npz", stand_in)
    write_arrays(tmp_path / "ref.npz", {"mu": mu, "sigma": sigma})
    stored = fid(tmp_path / "a.npz", tmp_path / "ref.npz", stand_in)
    assert stored["fid"] == pytest.approx(shifted["fid"], rel=1e-12)
    assert stored["reference_images"] is None and stored["samples_images"] == 40


def test_unusable_inputs_are_one_clear_error(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    write_arrays(tmp_path / "labels.npz", {"labels": np.arange(3)})
    write_arrays(tmp_path / "float.npz", {"arr_0": np.zeros((2, 4, 4, 3), np.float32)})
    write_arrays(tmp_path / "one.npz", {"arr_0": images(1, 0)})
    cases = {
        "missing.npz": "does not exist",
        "junk.npz": "not a readable .npz",
        "labels.npz": "neither arr_0",
        "float.npz": "must be uint8",
        "one.npz": "at least two",
    }
    for name, message in cases.items():
        with pytest.raises(FidError, match=message):
            statistics(tmp_path / name, stand_in)


def test_par_fid_prints_and_writes_the_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_module, "inception", lambda device, offline=False: stand_in)
    write_arrays(tmp_path / "a.npz", {"arr_0": images(10, 1)})
    write_arrays(tmp_path / "b.npz", {"arr_0": images(10, 1, brightness=20)})
    out = tmp_path / "fid.json"
    result = runner.invoke(
        app, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")] + ["-q", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("FID ")
    import json

    assert json.loads(out.read_text())["fid"] == pytest.approx(3 * (20 / 255) ** 2, rel=1e-6)


def test_without_torch_fidelity_par_fid_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    write_arrays(tmp_path / "a.npz", {"arr_0": images(4, 1)})
    result = runner.invoke(app, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'parcli[fid]'" in lines[0]


def test_offline_without_the_inception_weights_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FidError, match="not downloaded .* offline mode is on"):
        fid_module._inception_weights(offline=True)
    assert not any(tmp_path.iterdir())
