"""`.npz` files written the same, byte for byte, every time (`numpy.savez` stamps the time of
writing) and streamed in chunks rather than held whole, as uncompressed `.npy` members that
`numpy.load` and OpenAI's ADM evaluator read; and read back a few rows at a time."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from parcli.io.files import PathLike, atomic_path

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip file can hold


@dataclass(frozen=True)
class Member:
    """One array of an `.npz`: its shape and dtype, and its data in C order, chunk by chunk."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Iterable[np.ndarray]


def write_npz(path: PathLike, members: Mapping[str, Member], setting: str | None = None) -> None:
    """Write `members` as `NAME.npy` entries of one `.npz`; a chunk may be any slice of the
    array along its first axis, in order. The data must add up to the declared shape."""
    with atomic_path(path, setting) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for name, member in members.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            dtype = np.dtype(member.dtype)
            expected = int(np.prod(member.shape)) * dtype.itemsize
            written = 0
            with archive.open(info, "w", force_zip64=True) as handle:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
                np.lib.format.write_array_header_2_0(handle, {**header, "shape": member.shape})
                for chunk in member.chunks:
                    data = np.ascontiguousarray(chunk, dtype=dtype)
                    handle.write(data.tobytes())
                    written += data.nbytes
            if written != expected:
                raise ValueError(f"{name}: {written} bytes of data for shape {member.shape}")


def write_arrays(path: PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    write_npz(path, {name: Member(a.shape, a.dtype, [a]) for name, a in arrays.items()})


def npz_members(path: PathLike) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return [name.removesuffix(".npy") for name in archive.namelist()]


def read_rows(path: PathLike, name: str, rows: int) -> Iterator[np.ndarray]:
    """Member `name` of an `.npz`, `rows` entries of its first axis at a time, in order."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
        shape, dtype = _plain_header(handle, path, name)
        row_shape = shape[1:]
        row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            data = handle.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{name} in {path} is truncated")
            yield np.frombuffer(data, dtype=dtype).reshape(count, *row_shape)


def _plain_header(handle, path: PathLike, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the `.npy` at `handle`, refusing what par never reads: Fortran
    order, objects (a pickle), 0-d arrays, and headers that are not a `.npy`'s."""
    try:
        if np.lib.format.read_magic(handle) == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ValueError(f"{name} in {path} has no readable .npy header ({exc})") from None
    if fortran_order or dtype.hasobject or not shape:
        raise ValueError(f"{name} in {path} is not a plain C-ordered array")
    return tuple(int(n) for n in shape), dtype


def member_header(path: PathLike, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype member `name` of an `.npz` declares, read without its data; a
    ValueError for anything but a plain C-ordered array."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
        return _plain_header(handle, path, name)


def read_array(path: PathLike, name: str) -> np.ndarray:
    """Member `name` of an `.npz` whole, only where it is a plain array whose data are all
    there as its header says; a ValueError otherwise."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
        shape, dtype = _plain_header(handle, path, name)
        size = int(np.prod(shape)) * dtype.itemsize
        info = archive.getinfo(f"{name}.npy")
        if size > info.file_size:
            raise ValueError(f"{name} in {path} declares {shape} but holds fewer bytes")
        data = handle.read(size)
        if len(data) != size or handle.read(1):
            raise ValueError(f"{name} in {path} declares shape {shape} but holds other data")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
