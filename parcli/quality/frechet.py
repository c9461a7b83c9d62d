"""The Fréchet distance between Gaussians fitted to feature vectors: the formula of FID."""

from __future__ import annotations

import numpy as np


class Gaussian:
    """Mean and covariance of feature vectors (N, D), gathered batch by batch in float64, so
    that 50,000 vectors never have to be held at once."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        batch = np.asarray(features, dtype=np.float64)
        if self._sum is None:
            self._sum = np.zeros(batch.shape[1])
            self._outer = np.zeros((batch.shape[1], batch.shape[1]))
        self.count += len(batch)
        self._sum += batch.sum(axis=0)
        self._outer += batch.T @ batch

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance with N - 1 in the denominator, as numpy.cov)."""
        if self.count < 2 or self._sum is None or self._outer is None:
            raise ValueError("a Gaussian needs at least two feature vectors")
        mean = self._sum / self.count
        covariance = (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean, covariance


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) in float64, by symmetric
    eigen-decompositions (scipy's sqrtm(S_a S_b) for covariance matrices, without scipy)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    mean_term = float(np.sum((mu_a - mu_b) ** 2))
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    total = mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    # Round-off can make a tiny distance negative; NaN must stay NaN, which max() would hide.
    return float(np.maximum(0.0, total))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of feature vectors (N, D)."""
    a, b = np.asarray(feats_a), np.asarray(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {a.shape} and {b.shape}")
    gaussians = Gaussian(), Gaussian()
    for gaussian, feats in zip(gaussians, (a, b), strict=True):
        gaussian.add(feats)
    return frechet(*gaussians[0].moments(), *gaussians[1].moments())
