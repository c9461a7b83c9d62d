"""FID between two `.npz` files of images as OpenAI's ADM evaluator computes it: from the
features of torch-fidelity's TensorFlow-compatible Inception-v3, or a reference's mu and sigma."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from parcli.errors import UserError
from parcli.io.hub import offline_requested
from parcli.io.npz import UNREADABLE, member_header, npz_members, read_array, read_rows
from parcli.quality.frechet import Gaussian, frechet

# The weights torch-fidelity converts from TensorFlow's 2015-12-05 Inception graph.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)

Extractor = Callable[[torch.Tensor], torch.Tensor]
"""uint8 images (N, 3, H, W) -> float features (N, D)."""


class FidError(UserError):
    """An input or a network that FID cannot be computed with."""


def inception(device: torch.device, offline: bool = False) -> Extractor:
    """torch-fidelity's TensorFlow-compatible Inception-v3, giving the 2048 pool features."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise FidError(
            f"par fid needs torch-fidelity (and torchvision): pip install 'parcli[fid]' ({exc})"
        ) from None
    # Downloaded once into torch's hub cache, checked by the hash in its name.
    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    if not weights.is_file():
        if offline_requested(offline):
            raise FidError(
                f"the Inception-v3 weights are not downloaded ({weights.name}) and offline mode "
                "is on; run once with the network to fetch them (about 95 MB)"
            )
        weights.parent.mkdir(parents=True, exist_ok=True)
        try:
            sha256 = weights.stem.rsplit("-", 1)[1]
            torch.hub.download_url_to_file(INCEPTION_URL, str(weights), sha256, progress=False)
        except Exception as exc:  # noqa: BLE001 - urllib raises many kinds
            raise FidError(
                f"cannot download the Inception-v3 weights from {INCEPTION_URL}: {exc}"
            ) from None
    # Our rule: a pickle is read only with weights_only=True. torch-fidelity unpickles the file
    # itself, so it is first read here that way: it holds tensors and nothing else.
    try:
        torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged or foreign file fails in many ways
        weights.unlink(missing_ok=True)
        raise FidError("the Inception-v3 weights were damaged; run again to fetch them") from None
    network = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    )
    network = network.to(device).eval()

    @torch.inference_mode()
    def features(images: torch.Tensor) -> torch.Tensor:
        return network(images.to(device))[0].reshape(len(images), -1)

    return features


def statistics(
    path: Path,
    extractor: Extractor,
    batch_size: int = 50,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, image count) of an `.npz`: its stored `mu` and `sigma` where it has them
    (count None), else those of its `arr_0` images through `extractor`."""
    if not path.is_file():
        raise FidError(f"{path} does not exist")
    try:
        members = npz_members(path)
        if "mu" in members and "sigma" in members:  # a reference's: plain, real and finite
            mu, sigma = read_array(path, "mu"), read_array(path, "sigma")
            for name, array in (("mu", mu), ("sigma", sigma)):
                if array.dtype.kind not in "fiu":
                    raise FidError(f"{path}: {name} must hold real numbers, not {array.dtype}")
            if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or len(mu) < 1:
                raise FidError(
                    f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together; sigma "
                    "must be (D, D) for mu (D,)"
                )
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise FidError(f"{path}: mu or sigma holds NaN or infinity; use finite statistics")
            return mu.astype(np.float64), sigma.astype(np.float64), None
        if "arr_0" not in members:
            raise FidError(f"{path} holds neither arr_0 (images) nor mu and sigma")
        shape, dtype = member_header(path, "arr_0")
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise FidError(f"{path}: arr_0 must be uint8 (N, H, W, 3), not {dtype} {shape}")
        gaussian = Gaussian()
        for images in read_rows(path, "arr_0", batch_size):
            batch = torch.from_numpy(images.copy()).permute(0, 3, 1, 2)
            gaussian.add(extractor(batch).double().cpu().numpy())
            if on_batch is not None:
                on_batch(gaussian.count, len(images))
    except UNREADABLE as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise FidError(f"{path} is not a readable .npz ({reason})") from None
    if gaussian.count < 2:
        raise FidError(f"{path} holds {gaussian.count} image(s); FID needs at least two")
    mu, sigma = gaussian.moments()
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise FidError(f"the features of {path} are not finite numbers; check the network")
    return mu, sigma, gaussian.count


def fid(
    samples: Path,
    reference: Path,
    extractor: Extractor,
    batch_size: int = 50,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """The FID of `samples` against `reference`, with the image counts behind it."""
    mu_a, sigma_a, count_a = statistics(samples, extractor, batch_size, on_batch)
    mu_b, sigma_b, count_b = statistics(reference, extractor, batch_size, on_batch)
    if mu_a.shape != mu_b.shape:
        raise FidError(
            f"{samples} and {reference} have features of shapes {mu_a.shape} and {mu_b.shape}; "
            "use statistics of the same network"
        )
    try:
        # An overflow ends as inf, refused below in one line: numpy's warning would be a second.
        with np.errstate(all="ignore"):
            value = frechet(mu_a, sigma_a, mu_b, sigma_b)
    except (ValueError, np.linalg.LinAlgError):
        value = float("nan")
    if not np.isfinite(value):
        raise FidError(
            f"the FID of {samples} against {reference} is not a finite number; the statistics "
            "are too large to compare"
        )
    return {
        "fid": value,
        "samples": str(samples),
        "samples_images": count_a,
        "reference": str(reference),
        "reference_images": count_b,
    }
