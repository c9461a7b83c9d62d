"""`.npz` files the same byte for byte every time (`numpy.savez` stamps the time), streamed in
chunks as uncompressed `.npy` members that `numpy.load` and OpenAI's ADM evaluator read."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO

import numpy as np

from parcli.io.files import PathLike, atomic_path

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip file can hold
# What reading a damaged .npz raises (zipfile: NotImplementedError and RuntimeError for the
# versions and encryption a damaged header can claim).
UNREADABLE = (
    OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError
)  # fmt: skip


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


@contextlib.contextmanager
def _member(path: PathLike, name: str) -> Iterator[tuple[IO[bytes], tuple[int, ...], np.dtype]]:
    """Member `name` of an `.npz`, open after its header, with its shape and dtype; refuses what
    par never reads: Fortran order, objects (a pickle), 0-d arrays, and headers not a `.npy`'s."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
        try:
            if np.lib.format.read_magic(handle) == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ValueError(f"{name} in {path} has no readable .npy header ({exc})") from None
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError(f"{name} in {path} is not a plain C-ordered array")
        yield handle, tuple(int(n) for n in shape), dtype


def read_rows(path: PathLike, name: str, rows: int) -> Iterator[np.ndarray]:
    """Member `name` of an `.npz`, `rows` entries of its first axis at a time, in order."""
    with _member(path, name) as (handle, shape, dtype):
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            data = handle.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{name} in {path} is truncated")
            yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])


def member_header(path: PathLike, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype member `name` of an `.npz` declares, read without its data."""
    with _member(path, name) as (_, shape, dtype):
        return shape, dtype


def read_array(path: PathLike, name: str) -> np.ndarray:
    """Member `name` of an `.npz` whole, only where its data are exactly what its header says."""
    with _member(path, name) as (handle, shape, dtype):
        size = int(np.prod(shape)) * dtype.itemsize
        data = handle.read(size + 1)  # a byte more than declared tells of trailing data
        if len(data) != size:
            raise ValueError(f"{name} in {path} declares shape {shape} but holds other data")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
