import os
from pathlib import Path

import numpy as np
import pytest

from parcli.io import files
from parcli.io.files import OutputError, atomic_path, atomic_write, check_writable, file_sha256
from parcli.io.media import IMAGE_SUFFIXES, save_image


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ atomic writes


def test_atomic_success_replaces_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".txt"
        assert tmp.name.startswith(".par-")
        tmp.write_text("new")
        assert target.read_text() == "old"  # untouched until the block succeeds
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_failure_leaves_nothing(tmp_path, error):
    target = tmp_path / "out.png"
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise error("boom")
    assert _listing(tmp_path) == []


def test_atomic_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "out.npy"
    target.write_bytes(b"old")

    def writer(tmp):
        tmp.write_bytes(b"half")
        raise ValueError("writer failed")

    with pytest.raises(ValueError):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.npy"]


def test_atomic_write_returns_path(tmp_path):
    target = tmp_path / "a.bin"
    assert atomic_write(target, lambda tmp: tmp.write_bytes(b"x")) == target
    assert target.read_bytes() == b"x"


# ------------------------------------------------------------------ up-front checks


def test_missing_directory_is_one_line_output_error(tmp_path):
    target = tmp_path / "missing" / "y.png"
    with pytest.raises(OutputError) as info:
        check_writable(target)
    message = str(info.value)
    assert "\n" not in message
    assert "does not exist" in message and "choose another path" in message
    assert str(target.parent) in message and info.value.setting == "output"
    with pytest.raises(OutputError) as info:
        check_writable(target, setting="json")
    assert info.value.setting == "json"


def test_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_writable(tmp_path / "file" / "y.png")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable") as info:
            check_writable(locked / "y.png")
        assert "\n" not in str(info.value)
    finally:
        locked.chmod(0o700)


def test_unwritable_directory_simulated(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "open", refuse)
    with pytest.raises(OutputError, match="not writable") as info:
        check_writable(tmp_path / "y.png")
    assert "\n" not in str(info.value)
    with pytest.raises(OutputError, match="not writable"):
        save_image(tmp_path / "y.png", np.zeros((2, 2), np.uint8))
    assert _listing(tmp_path) == []


def test_unsupported_suffix(tmp_path):
    with pytest.raises(OutputError, match="unsupported file type .bmp; use .png or .gif"):
        check_writable(tmp_path / "y.bmp", (".png", ".gif"))
    with pytest.raises(OutputError):
        check_writable(tmp_path / "y.mp4", IMAGE_SUFFIXES)
    assert check_writable(tmp_path / "y.PNG", IMAGE_SUFFIXES) == tmp_path / "y.PNG"
    assert check_writable(tmp_path / "y.anything") == tmp_path / "y.anything"


def test_target_is_a_directory(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path / "d.png")


def test_directory_targets(tmp_path):
    assert check_writable(str(tmp_path) + "/", allow_directory=True) == tmp_path
    assert check_writable(str(tmp_path / "new") + "/", allow_directory=True) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(OutputError, match="does not exist"):
        check_writable(str(tmp_path / "a" / "b") + "/", allow_directory=True)


# ------------------------------------------------------------------ hashing and safetensors


def test_file_sha256_reads_in_chunks(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    data = os.urandom((8 << 20) + 5)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_safetensors_written_by_ours_load_anywhere(tmp_path):
    import torch
    from safetensors.torch import load_file

    from parcli.io.tensors import WeightsError, read_safetensors, write_safetensors

    tensors = {"w": torch.randn(3, 4), "ids": torch.arange(5), "empty": torch.zeros(0)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, {"note": "hi"}, torch.bfloat16)
    loaded = load_file(path)
    assert loaded["w"].dtype == torch.bfloat16 and torch.equal(loaded["w"], tensors["w"].bfloat16())
    assert torch.equal(loaded["ids"], tensors["ids"]) and loaded["empty"].shape == (0,)
    back, metadata = read_safetensors(path)
    assert metadata == {"note": "hi"} and set(back) == set(tensors)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="junk.safetensors is a truncated or corrupt"):
        read_safetensors(tmp_path / "junk.safetensors")
    assert _listing(tmp_path) == ["junk.safetensors", "t.safetensors"]


def test_a_new_folder_without_its_slash_is_told_to_add_one(tmp_path):
    with pytest.raises(OutputError, match=r"\(no suffix\); use .png.*, or .*newdir/ for a folder"):
        check_writable(tmp_path / "newdir", (".png",), allow_directory=True)
    with pytest.raises(OutputError) as refused:  # where a folder is no choice, none is offered
        check_writable(tmp_path / "newdir", (".png",))
    assert "for a folder" not in str(refused.value)
