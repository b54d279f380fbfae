"""Feature extractors (jaxdiff's classifier, the FID InceptionV3) and the reference statistics
that FID and KID compare samples with."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from jaxdiff.common import paths
from jaxdiff.common.array_files import ArrayFileError
from jaxdiff.common.errors import one_line
from jaxdiff.evaluation import classifier as classifier_lib
from jaxdiff.evaluation import inception
from jaxdiff.evaluation.fid import (FeatureStats, StatsAccumulator, check_sample_count, feature_stats,
                                    frechet_distance, kid)

KID_REFERENCE_MAX = 10_000  # reference features kept for KID (a fixed random subset beyond this)


class FeatureExtractor(NamedTuple):
    """``features(images uint8 [B, H, W, C]) -> float32 [B, dim]`` (compiled for ``batch_size``), with
    the ``fingerprint`` of its weights, and whether its FIDs compare with papers'."""

    name: str
    dim: int
    features: Callable
    fingerprint: str
    comparable_with_papers: bool
    info: dict


def extract_features(extractor: FeatureExtractor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Features of uint8 ``images [N, H, W, C]`` in fixed-size batches (one compiled shape)."""
    return classifier_lib.batched_apply(extractor.features, images, batch_size)


def classifier_extractor(clf: classifier_lib.TrainedClassifier) -> FeatureExtractor:
    apply = clf.apply_fn()
    return FeatureExtractor(
        "classifier", clf.spec.features, lambda images: apply(images)[1], clf.spec.fingerprint(), False,
        {"classifier_test_accuracy": clf.test_accuracy, "classifier_num_test": clf.num_test,
         "classifier_spec": clf.spec._asdict()})


def inception_extractor(weights_path: str) -> FeatureExtractor:
    """The FID InceptionV3 with the weights at ``weights_path``. Its FIDs are ``comparable_with_papers``
    only when the file is pytorch-fid's released ``.pth`` (its SHA-256 checked; the architecture is
    checked against pytorch-fid's module by the tests): an ``.npz`` or any other file records
    ``inception_weights_verified: false`` and its SHA-256, and is not called comparable."""
    variables = inception.load_weights(weights_path)
    provenance = inception.weights_provenance(weights_path)
    return FeatureExtractor("inception", inception.FEATURE_DIM, inception.make_feature_fn(variables),
                            inception.file_fingerprint(weights_path), provenance["inception_weights_verified"],
                            {"inception_weights": str(paths.as_path(weights_path)), **provenance})


class Reference(NamedTuple):
    """Feature statistics of the reference split and a fixed subset of its features (for KID)."""

    stats: FeatureStats
    kid_features: np.ndarray
    path: str


def reference_statistics(extractor: FeatureExtractor, source, path: paths.PathLike, batch_size: int,
                         log=print, progress=None) -> Reference:
    """Statistics of the images of ``source`` (a random-access source, ``source[indices] -> (uint8
    images, labels)``, or a uint8 array) under ``extractor``: loaded from ``path`` if cached, else
    computed in batches, never holding more than one batch of images (mean and covariance over all
    images; up to :data:`KID_REFERENCE_MAX` features kept for KID, a ``default_rng(0)`` subset beyond
    that) and written there by process 0."""
    path = paths.as_path(path)
    n = len(source)
    if path.exists():
        try:
            z = paths.load_npz(path)
            ref = Reference(FeatureStats(z["mu"], z["sigma"], int(z["n"])), z["kid_features"], str(path))
            usable = (ref.stats.n == n and ref.stats.mu.shape == (extractor.dim,)
                      and ref.stats.sigma.shape == (extractor.dim,) * 2 and ref.kid_features.ndim == 2
                      and ref.kid_features.shape[1] == extractor.dim)
        except (ArrayFileError, KeyError, TypeError, ValueError) as e:  # a damaged cache is recomputed
            log(f"eval: the cached reference statistics cannot be used ({one_line(e)})")
            usable = False
        if usable:
            log(f"eval: reference statistics from {path}")
            return ref
    check_sample_count(n, extractor.dim, "reference split")
    log(f"eval: computing reference statistics of {n} images -> {path}")
    acc, kept = StatsAccumulator(), []
    keep = np.zeros(n, bool)
    keep[np.random.default_rng(0).permutation(n)[:KID_REFERENCE_MAX]] = True
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        images = source[rows] if isinstance(source, np.ndarray) else source[rows][0]
        f = extract_features(extractor, np.asarray(images), batch_size)
        acc.update(f)
        kept.append(f[keep[rows]])
        if progress is not None:
            progress.update(len(rows))
    ref = Reference(acc.result(), np.concatenate(kept).astype(np.float32), str(path))
    if paths.is_writer():
        paths.save_npz(path, mu=ref.stats.mu, sigma=ref.stats.sigma, n=ref.stats.n, kid_features=ref.kid_features)
    return ref


def fid_kid(extractor: FeatureExtractor, images: np.ndarray, ref: Reference, batch_size: int,
            kid_subsets: int, kid_subset_size: int, seed: int = 0) -> dict:
    """FID and KID of uint8 ``images`` against ``ref`` (see the module docstring for the protocol)."""
    check_sample_count(len(images), extractor.dim, "eval.num_samples")
    feats = extract_features(extractor, images, batch_size)
    stats = feature_stats(feats)
    kid_mean, kid_std, m = kid(feats, ref.kid_features, kid_subsets, kid_subset_size, seed)
    return {"fid": frechet_distance(stats.mu, stats.sigma, ref.stats.mu, ref.stats.sigma),
            "kid": kid_mean, "kid_std": kid_std, "kid_subset_size": m, "kid_subsets": kid_subsets,
            "num_samples": int(len(images)), "num_reference": int(ref.stats.n),
            "feature_extractor": extractor.name, "feature_dim": extractor.dim,
            "comparable_with_papers": extractor.comparable_with_papers}
