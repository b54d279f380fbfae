"""FID and KID: the Fréchet distance and the kernel distance of two sets of feature vectors,
float64 NumPy (the protocol they are used with is in :mod:`jaxdiff.drivers.eval_mode`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class EvalError(ValueError):
    """An evaluation input (sample count, statistics, weights file) cannot be used."""


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric positive semi-definite square root of a symmetric PSD matrix, float64:
    ``U diag(sqrt(max(l, 0))) U^T`` from ``a = U diag(l) U^T`` (tiny negative eigenvalues from
    rounding are clipped to 0)."""
    a = np.asarray(a, np.float64)
    w, u = np.linalg.eigh(0.5 * (a + a.T))
    return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr sqrt(S_1 S_2)`` for covariance matrices.

    ``S_1 S_2`` is not symmetric, but it is similar to ``M = sqrt(S_1) S_2 sqrt(S_1)``, which is
    symmetric PSD, so ``tr sqrt(S_1 S_2) = sum_i sqrt(lambda_i(M))``. This needs only symmetric
    eigendecompositions: no complex parts, no ``eps * I`` retry (pytorch-fid needs one when
    ``scipy.linalg.sqrtm`` meets a singular product).
    """
    r = sqrtm_psd(s1)
    m = r @ np.asarray(s2, np.float64) @ r
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians (FID on feature statistics), float64:
    ``|mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr sqrt(S_1 S_2)``."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"FID statistics do not match: means {mu1.shape} {mu2.shape}, "
                         f"covariances {s1.shape} {s2.shape}")
    fid = float(np.sum(np.square(mu1 - mu2)) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(fid, 0.0)  # a distance; only rounding can push it below 0


class FeatureStats(NamedTuple):
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` (float64) of ``n`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def check_sample_count(n: int, dim: int, what: str) -> None:
    """FID needs a full-rank covariance: more feature vectors than dimensions."""
    if n <= dim:
        raise EvalError(f"{what}: {n} images give a singular {dim}x{dim} feature covariance, so FID is "
                        f"undefined; use more than {dim} (the feature dimension)")


class StatsAccumulator:
    """Streaming float64 mean and covariance: ``sum (x - c)`` and ``sum (x - c)(x - c)^T`` about a
    shift ``c`` (the first batch's mean), which keeps the subtraction well conditioned."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def update(self, feats: np.ndarray) -> None:
        f = np.asarray(feats, np.float64)
        if self.shift is None:
            self.shift = f.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((f.shape[1], f.shape[1]))
        f = f - self.shift
        self.n += f.shape[0]
        self.s1 += f.sum(axis=0)
        self.s2 += f.T @ f

    def result(self) -> FeatureStats:
        if self.n < 2:
            raise EvalError("feature statistics need at least two images")
        m = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return FeatureStats(self.shift + m, 0.5 * (sigma + sigma.T), self.n)


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance (``np.cov``, ``n - 1``) of ``features [n, d]``."""
    acc = StatsAccumulator()
    acc.update(features)
    return acc.result()


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x . y / d + 1)^3``, float64 ``[n, m]``."""
    d = x.shape[1]
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with :func:`polynomial_kernel` for equal-size sets (Gretton et al. 2012, eq. 3):
    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1)) - 2 mean k(x_i, y_j)``."""
    m = x.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2.0 * kxy.mean())


def kid(features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float, int]:
    """Kernel Inception Distance: mean and standard deviation of :func:`mmd2_unbiased` over
    ``num_subsets`` pairs of subsets (each drawn without replacement from its set by
    ``default_rng(seed)``) of ``min(subset_size, len(a), len(b))`` vectors. Returns
    ``(mean, std, subset size used)``; the estimate is unbiased, so it can be slightly negative."""
    m = min(subset_size, len(features_a), len(features_b))
    if m < 2:
        raise EvalError("KID needs at least two feature vectors in each set")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(features_a[rng.choice(len(features_a), m, replace=False)],
                          features_b[rng.choice(len(features_b), m, replace=False)])
            for _ in range(num_subsets)]
    return float(np.mean(vals)), float(np.std(vals)), m
