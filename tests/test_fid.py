"""FID's bookkeeping offline: a small stand-in network replaces Inception-v3."""

import sys
import types

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
    network = types.SimpleNamespace(FeatureExtractorInceptionV3=None)  # torch-fidelity not needed
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", network)
    with pytest.raises(FidError, match="not downloaded .* offline mode is on"):
        fid_module.inception(torch.device("cpu"), offline=True)
    assert not any(tmp_path.iterdir())


def test_damaged_inception_weights_are_removed_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    network = types.SimpleNamespace(FeatureExtractorInceptionV3=None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", network)
    weights = tmp_path / "checkpoints" / fid_module.INCEPTION_URL.rsplit("/", 1)[1]
    weights.parent.mkdir()
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(FidError, match="damaged; run again"):
        fid_module.inception(torch.device("cpu"))
    assert not weights.exists()


def _npy(array: np.ndarray, header: dict | None = None) -> bytes:
    """The bytes of a `.npy`, with its header replaced where `header` is given."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        header
        or {
            "descr": np.lib.format.dtype_to_descr(array.dtype),
            "fortran_order": False,
            "shape": array.shape,
        },
    )
    return buffer.getvalue() + array.tobytes(order="A")


def _zip(path, members: dict) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)


def test_malformed_statistics_and_images_are_one_line_each(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_module, "inception", lambda device, offline=False: stand_in)
    write_arrays(tmp_path / "a.npz", {"arr_0": images(20, 1)})
    mu, sigma = np.zeros(6), np.eye(6)
    nan_mu, inf_sigma = mu.copy(), sigma.copy()
    nan_mu[2], inf_sigma[1, 1] = np.nan, np.inf
    fortran = np.asfortranarray(np.eye(6))
    cases = {
        "nan": ({"mu": nan_mu, "sigma": sigma}, "NaN or infinity"),
        "inf": ({"mu": mu, "sigma": inf_sigma}, "NaN or infinity"),
        "huge": ({"mu": mu + 1e300, "sigma": sigma * 1e300}, "not a finite number"),
        "scalar": ({"mu": np.float64(1.0), "sigma": sigma}, "not a plain C-ordered array"),
        "wide": ({"mu": np.zeros(4), "sigma": sigma}, "mu (4,) and sigma (6, 6)"),
        "other": ({"mu": np.zeros(4), "sigma": np.eye(4)}, "shapes (6,) and (4,)"),
        "text": ({"mu": np.array(["a"] * 6), "sigma": sigma}, "real numbers"),
    }
    for name, (arrays, _) in cases.items():
        write_arrays(tmp_path / f"{name}.npz", arrays)
    raw = {
        "fortran": {
            "mu": _npy(mu),
            "sigma": _npy(fortran, {"descr": "<f8", "fortran_order": True, "shape": (6, 6)}),
        },
        "object": {"mu": b"", "sigma": _npy(sigma)},
        "lying": {
            "mu": _npy(mu, {"descr": "<f8", "fortran_order": False, "shape": (600,)}),
            "sigma": _npy(sigma),
        },
        "lying_images": {
            "arr_0": _npy(
                images(4, 0), {"descr": "|u1", "fortran_order": False, "shape": (400, 8, 8, 3)}
            )
        },
        "bad_header": {"mu": b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}  \n", "sigma": b""},
    }
    raw["object"]["mu"] = _npy(np.zeros(0), {"descr": "|O", "fortran_order": False, "shape": (6,)})
    for name, members in raw.items():
        _zip(tmp_path / f"{name}.npz", members)
    raw_messages = {
        "fortran": "not a plain C-ordered array",
        "object": "not a plain C-ordered array",
        "lying": "declares",
        "lying_images": "truncated",
        "bad_header": "not a readable .npz",
    }
    expected = {**{name: message for name, (_, message) in cases.items()}, **raw_messages}
    for name, message in expected.items():
        pair = [str(tmp_path / "a.npz"), str(tmp_path / f"{name}.npz")]
        result = runner.invoke(app, ["fid", "-q", *pair])
        assert result.exit_code == 2, (name, result.output)
        assert "Traceback" not in result.output and "FID 0" not in result.output, name
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, result.output)
        assert message in " ".join(result.output.split()), (name, result.output)


def test_a_huge_fid_is_printed_readably(tmp_path, monkeypatch):
    from parcli.commands.fid import format_fid

    assert format_fid(12.345678) == "12.3457"
    assert format_fid(3.2e12) == "3.2000e+12"
    monkeypatch.setattr(fid_module, "inception", lambda device, offline=False: stand_in)
    write_arrays(tmp_path / "a.npz", {"arr_0": images(20, 1)})
    write_arrays(tmp_path / "far.npz", {"mu": np.full(6, 1e5), "sigma": np.eye(6)})
    result = runner.invoke(app, ["fid", "-q", str(tmp_path / "a.npz"), str(tmp_path / "far.npz")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "FID 6.0000e+10"
