"""Sample quality and likelihood of a checkpoint: FID, KID, bits/dim, conditional accuracy.

Protocol (docs/evaluation.md states it for readers; every number is written with it):

* samples come from the **EMA** parameters with the configured sampler, ``eval.num_samples`` of
  them (the count is written next to each number); a class-conditional model samples balanced
  labels at guidance scale ``eval.fid_guidance_scale``;
* samples are quantised exactly like stored images: ``uint8(round((clip(x, -1, 1) + 1) * 127.5))``;
  data images are already uint8, so both sides enter the feature extractor identically;
* reference statistics are the features of the whole ``eval.reference_split`` (the training split
  by default), computed once and cached in ``<workdir>/eval/`` under a name that includes the
  extractor's fingerprint;
* features: ``classifier`` (jaxdiff's own CNN trained on the dataset, 128-d penultimate layer; not
  comparable with papers) or ``inception`` (the FID InceptionV3, pool3 2048-d; comparable with
  papers that use the TF/pytorch-fid Inception weights);
* FID = ``|mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr sqrt(S_1 S_2)`` in float64 with the unbiased
  (``n - 1``) covariance; it needs more samples than feature dimensions;
* KID = unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  ``eval.kid_subsets`` subset pairs of ``eval.kid_subset_size`` (Binkowski et al. 2018; clean-fid).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import classifier as classifier_lib
from jaxdiff import likelihood, samplers
from jaxdiff.config import ConfigError
from jaxdiff.plotting import to_uint8  # the FID quantisation: round((clip(x, -1, 1) + 1) * 127.5)

EXTRACTORS = ("classifier", "inception")
EVAL_STREAM = 101  # fold_in stream id of evaluation keys (train.py's streams are small integers)
KID_REFERENCE_MAX = 10_000  # reference features kept for KID (a fixed random subset beyond this)
HELD_OUT_FRACTION = 0.2  # test share carved from a source that has no test split (digits)


class EvalError(ConfigError):
    """An evaluation input (config value, sample count, weights file) cannot be used."""


# ----------------------------------------------------------------------------- the maths


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


# ----------------------------------------------------------------------------- features


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
    from jaxdiff import inception

    variables = inception.load_weights(weights_path)
    return FeatureExtractor("inception", inception.FEATURE_DIM, inception.make_feature_fn(variables),
                            inception.file_fingerprint(weights_path), True,
                            {"inception_weights": os.path.abspath(weights_path)})


# ----------------------------------------------------------------------------- data


def take(source, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """All (or ``indices``) of a random-access source as ``(uint8 images, int labels)``."""
    idx = np.arange(len(source)) if indices is None else np.asarray(indices)
    images, labels = source[idx]
    return np.asarray(images), np.asarray(labels)


def load_splits(data_config) -> tuple[tuple, tuple, str]:
    """``(train, test, note)`` of the configured dataset, each ``(uint8 images, labels)``.

    A source without a test split (``load_source`` returns the training images for ``"test"``, as
    for scikit-learn's digits) is split once, deterministically: a ``default_rng(0)`` permutation
    sends :data:`HELD_OUT_FRACTION` of it to ``test``; ``note`` says so.
    """
    from jaxdiff import data

    train_src = data.load_source(data_config, "train")
    train = take(train_src)
    try:
        test = take(data.load_source(data_config, "test"))
    except (ValueError, KeyError, TypeError):
        test = train
    if test[0].shape == train[0].shape and np.array_equal(test[1], train[1]) and np.array_equal(test[0], train[0]):
        n = len(train[1])
        perm = np.random.default_rng(0).permutation(n)
        k = int(round(n * HELD_OUT_FRACTION))
        te, tr = np.sort(perm[:k]), np.sort(perm[k:])
        note = (f"{data_config.dataset} has no test split: a fixed default_rng(0) permutation holds out "
                f"{k} of {n} images as the test split (a model trained on the whole source has seen them)")
        return (train[0][tr], train[1][tr]), (train[0][te], train[1][te]), note
    return train, test, f"{data_config.dataset} train/test splits"


def classifier_spec(config, train: tuple) -> classifier_lib.ClassifierSpec:
    ev = config.eval
    return classifier_lib.ClassifierSpec(
        dataset=config.data.dataset, image_shape=tuple(int(s) for s in train[0].shape[1:]),
        num_classes=int(np.max(train[1])) + 1, num_train=int(len(train[1])), ch=ev.classifier_ch,
        features=ev.classifier_features, steps=ev.classifier_steps, batch_size=ev.classifier_batch_size,
        learning_rate=float(ev.classifier_learning_rate), seed=int(config.seed))


def classifier_dir(config, workdir: str) -> str:
    return config.eval.classifier_dir or os.path.join(workdir, "eval")


# ----------------------------------------------------------------------------- reference statistics


class Reference(NamedTuple):
    """Feature statistics of the reference split and a fixed subset of its features (for KID)."""

    stats: FeatureStats
    kid_features: np.ndarray
    path: str


def reference_path(workdir: str, dataset: str, image_shape, split: str, extractor: FeatureExtractor) -> str:
    size = "x".join(str(s) for s in image_shape)
    return os.path.join(workdir, "eval", f"reference_{dataset}_{size}_{split}_{extractor.name}_"
                                         f"{extractor.fingerprint}.npz")


def reference_statistics(extractor: FeatureExtractor, images: np.ndarray, path: str, batch_size: int,
                         log=print) -> Reference:
    """Statistics of ``images`` under ``extractor``: loaded from ``path`` if cached, else computed
    (mean and covariance over all images; up to :data:`KID_REFERENCE_MAX` features kept for KID,
    a ``default_rng(0)`` subset beyond that) and written there."""
    if os.path.exists(path):
        with np.load(path) as z:
            ref = Reference(FeatureStats(z["mu"], z["sigma"], int(z["n"])), z["kid_features"], path)
        if ref.stats.n == len(images) and ref.stats.mu.shape == (extractor.dim,):
            log(f"eval: reference statistics from {path}")
            return ref
    check_sample_count(len(images), extractor.dim, "reference split")
    log(f"eval: computing reference statistics of {len(images)} images -> {path}")
    acc, kept = StatsAccumulator(), []
    keep = np.zeros(len(images), bool)
    keep[np.random.default_rng(0).permutation(len(images))[:KID_REFERENCE_MAX]] = True
    for start in range(0, len(images), batch_size):
        f = extract_features(extractor, images[start:start + batch_size], batch_size)
        acc.update(f)
        kept.append(f[keep[start:start + batch_size]])
    ref = Reference(acc.result(), np.concatenate(kept).astype(np.float32), path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=ref.stats.mu, sigma=ref.stats.sigma, n=ref.stats.n, kid_features=ref.kid_features)
    os.replace(tmp, path)
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


# ----------------------------------------------------------------------------- sampling


def sampling_steps(sampling_config, tables) -> int:
    """Network evaluations per sample of the configured sampler."""
    return int(sampling_config.get("num_steps", 0) or tables.num_timesteps)


def make_image_generator(model, tables, sampling_config, target: str, image_shape: tuple,
                         guidance_scale: float = 1.0, batch_size: int = 256):
    """A compiled ``generate(params, key, labels [batch_size]) -> images [batch_size, H, W, C] in [-1, 1]``.

    The sampler ``config.sampling`` describes, through :func:`jaxdiff.samplers.make_chunk_generator`
    (``x_T`` from ``fold_in(key, 0)``, sampler noise from ``fold_in(key, 1)``, as ``jaxdiff.sample``).
    A class-conditional model (``model.num_classes > 0``) samples ``labels`` with classifier-free
    guidance ``guidance_scale`` (0 = unconditional, 1 = plain conditional); an unconditional one
    ignores them.
    """
    sampler = samplers.sampler_from_config(tables, sampling_config, target)
    null_label = model.num_classes or None
    generate = samplers.make_chunk_generator(lambda p, x, t, y: model.apply({"params": p}, x, t, y), sampler,
                                             image_shape, batch_size, float(guidance_scale), null_label)
    return lambda params, key, labels: generate(params, key, labels if null_label else None)[0]


def generate_uint8(generate, params, labels: np.ndarray, batch_size: int, key: jax.Array) -> np.ndarray:
    """``len(labels)`` quantised samples from ``generate(params, key, labels)`` in fixed-size chunks
    (the last padded, padding dropped); chunk ``i`` uses ``fold_in(key, i)``."""
    out = []
    labels = np.asarray(labels, np.int32)
    for i, start in enumerate(range(0, len(labels), batch_size)):
        chunk = labels[start:start + batch_size]
        m = len(chunk)
        if m < batch_size:
            chunk = np.concatenate([chunk, np.zeros(batch_size - m, np.int32)])
        x = generate(params, jax.random.fold_in(key, i), jnp.asarray(chunk))
        out.append(to_uint8(jax.device_get(x))[:m])
    return np.concatenate(out)


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """``0, 1, ..., K-1, 0, 1, ...`` (``n`` labels; zeros for an unconditional model)."""
    return np.arange(n, dtype=np.int32) % max(num_classes, 1)


# ----------------------------------------------------------------------------- conditional accuracy


def conditional_accuracy(make_generate: Callable[[float], Callable], params, classify: Callable,
                         num_classes: int, per_class: int, scales, batch_size: int, key: jax.Array) -> list:
    """For each guidance scale ``w``: the share of ``per_class`` samples of every class that
    ``classify`` (uint8 images -> logits) assigns to the class asked for, overall and per class.
    ``make_generate(w)`` gives a compiled ``generate(params, key, labels)`` (see above)."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    rows = []
    for j, w in enumerate(scales):
        images = generate_uint8(make_generate(float(w)), params, labels, batch_size, jax.random.fold_in(key, j))
        logits = classifier_lib.batched_apply(classify, images, batch_size)
        hit = np.argmax(logits, axis=-1) == labels
        rows.append({"guidance_scale": float(w), "accuracy": float(hit.mean()),
                     "per_class": [float(hit[labels == c].mean()) for c in range(num_classes)],
                     "num_samples": int(len(labels))})
    return rows


def accuracy_table(rows: list, classifier_accuracy: float) -> str:
    """The conditional-accuracy rows as a Markdown table."""
    lines = [f"classifier test accuracy {classifier_accuracy:.4f}; chance {1.0 / len(rows[0]['per_class']):.3f}",
             "", "| guidance w | accuracy | samples |", "|---|---|---|"]
    lines += [f"| {r['guidance_scale']:g} | {r['accuracy']:.4f} | {r['num_samples']} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_conditional_accuracy(rows: list, classifier_accuracy: float, path: str) -> None:
    """Accuracy against guidance scale, with the classifier's own test accuracy and chance as guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["guidance_scale"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ax.plot(w, [r["accuracy"] for r in rows], "o-", label="samples classified as asked")
    ax.axhline(classifier_accuracy, color="gray", ls="--", lw=1, label="classifier test accuracy")
    ax.axhline(1.0 / len(rows[0]["per_class"]), color="gray", ls=":", lw=1, label="chance")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- config checks


def validate_eval(config, check_weights: bool = True) -> None:
    """Raise :class:`EvalError` (one line) for an unusable ``config.eval`` / ``training.eval_every``.

    With ``check_weights`` and the Inception extractor, the weights file is read and every array's
    shape checked (no compile)."""
    ev = config.eval

    def positive(value, field):
        if not isinstance(value, int) or value <= 0:
            raise EvalError(f"{field} must be a positive integer, got {value!r}")

    if ev.feature_extractor not in EXTRACTORS:
        raise EvalError(f"eval.feature_extractor={ev.feature_extractor!r} is not one of {', '.join(EXTRACTORS)}")
    for field in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "bpd_batch_size",
                  "samples_per_class", "train_fid_samples", "classifier_ch", "classifier_features",
                  "classifier_steps", "classifier_batch_size"):
        positive(ev[field], f"eval.{field}")
    if not isinstance(ev.bpd_num_images, int) or ev.bpd_num_images < 0:
        raise EvalError(f"eval.bpd_num_images must be a non-negative integer, got {ev.bpd_num_images!r}")
    if ev.reference_split not in ("train", "test"):
        raise EvalError(f"eval.reference_split={ev.reference_split!r} is not one of train, test")
    every = config.training.get("eval_every", 0)
    if not isinstance(every, int) or every < 0:
        raise EvalError(f"training.eval_every must be a non-negative integer, got {every!r}")
    dim = feature_dim(config)
    check_sample_count(ev.num_samples, dim, "eval.num_samples")
    if every:
        check_sample_count(ev.train_fid_samples, dim, "eval.train_fid_samples")
    if check_weights and ev.feature_extractor == "inception":
        from jaxdiff import inception

        try:
            inception.load_weights(ev.inception_weights)  # presence and every shape, before any compile
        except inception.InceptionWeightsError as e:
            raise EvalError(str(e)) from None


def feature_dim(config) -> int:
    return 2048 if config.eval.feature_extractor == "inception" else config.eval.classifier_features


def build_extractor(config, workdir: str, train: tuple, test: tuple, log=print, for_accuracy: bool = True):
    """``(extractor, classifier or None)``: the classifier is trained/cached whenever it is needed
    (classifier features, or, with ``for_accuracy``, conditional accuracy of a class-conditional model)."""
    clf = None
    if config.eval.feature_extractor == "classifier" or (for_accuracy and config.model.class_conditional):
        clf = classifier_lib.get_classifier(classifier_spec(config, train), train, test,
                                            classifier_dir(config, workdir), log)
    if config.eval.feature_extractor == "inception":
        return inception_extractor(config.eval.inception_weights), clf
    return classifier_extractor(clf), clf


# ----------------------------------------------------------------------------- drivers


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def evaluate_params(config, workdir: str, params, model, tables, step: int, log=print,
                    make_generate: Callable | None = None) -> dict:
    """All metrics of ``params`` (the EMA parameters of checkpoint ``step``); writes
    ``<workdir>/eval/metrics_<step>.json`` (and ``metrics.json``), the reference statistics, and for
    conditional models ``conditional_accuracy_<step>.{json,md,png}``. Returns the metrics.

    ``make_generate(w) -> generate(params, key, labels) -> images in [-1, 1]`` may replace the
    built-in DDPM sampler (:func:`make_image_generator`)."""
    ev, dc = config.eval, config.diffusion
    t0 = time.perf_counter()
    train, test, split_note = load_splits(config.data)
    image_shape = tuple(train[0].shape[1:])
    num_classes = int(model.num_classes)
    extractor, clf = build_extractor(config, workdir, train, test, log)
    if make_generate is None:
        cache: dict = {}

        def make_generate(w):  # one compiled sampler per guidance scale, shared by FID and accuracy
            if w not in cache:
                cache[w] = make_image_generator(model, tables, config.sampling, dc.target, image_shape, w,
                                                ev.batch_size)
            return cache[w]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM), step)

    ref_images = train[0] if ev.reference_split == "train" else test[0]
    ref = reference_statistics(extractor, ref_images,
                               reference_path(workdir, config.data.dataset, image_shape, ev.reference_split,
                                              extractor), ev.batch_size, log)
    guidance = float(ev.fid_guidance_scale) if num_classes else None
    log(f"eval: generating {ev.num_samples} samples (EMA params, {config.sampling.sampler}, "
        f"{sampling_steps(config.sampling, tables)} steps)")
    images = generate_uint8(make_generate(guidance if num_classes else 1.0), params,
                            balanced_labels(ev.num_samples, num_classes), ev.batch_size, jax.random.fold_in(key, 0))
    metrics = {"checkpoint_step": int(step), "params": "ema", "sampler": config.sampling.sampler,
               "sampling_steps": sampling_steps(config.sampling, tables), "variance": config.sampling.variance,
               "clip_x0": bool(config.sampling.clip_x0), "guidance_scale": guidance,
               "quantisation": "uint8(round((clip(x, -1, 1) + 1) * 127.5))",
               "dataset": config.data.dataset, "image_shape": list(image_shape), "splits": split_note,
               "reference_split": ev.reference_split, "reference_path": ref.path, "seed": int(config.seed)}
    metrics.update(fid_kid(extractor, images, ref, ev.batch_size, ev.kid_subsets, ev.kid_subset_size))
    metrics.update(extractor.info)
    log(f"eval: FID {metrics['fid']:.3f}  KID {metrics['kid']:.5f} ({extractor.name} features, "
        f"{ev.num_samples} samples vs {ref.stats.n} {ev.reference_split} images)")

    if ev.bpd:
        images_test = test[0] if not ev.bpd_num_images else test[0][:ev.bpd_num_images]
        apply = lambda p, x, t: model.apply({"params": p}, x, t, None)  # noqa: E731  (null label if conditional)
        bpd_fn = likelihood.make_bpd_fn(apply, tables, dc.target, config.sampling.variance, ev.bpd_clip_x0)
        res = likelihood.dataset_bpd(bpd_fn, params, images_test, ev.bpd_batch_size, jax.random.fold_in(key, 1))
        metrics.update({"bpd": res["bpd"], "bpd_stderr": res["bpd_stderr"], "bpd_prior": res["prior_bpd"],
                        "bpd_decoder": float(res["terms_bpd"][0]), "bpd_num_images": res["num_images"],
                        "bpd_variance": config.sampling.variance, "bpd_clip_x0": bool(ev.bpd_clip_x0),
                        "bpd_split": "test", "bpd_conditioning": "null label" if num_classes else "none"})
        log(f"eval: {res['bpd']:.4f} +- {res['bpd_stderr']:.4f} bits/dim on {res['num_images']} test images")

    eval_dir = os.path.join(workdir, "eval")
    if num_classes and clf is not None:
        apply_clf = clf.apply_fn()
        rows = conditional_accuracy(make_generate, params, lambda x: apply_clf(x)[0], num_classes,
                                    ev.samples_per_class, ev.guidance_scales, ev.batch_size,
                                    jax.random.fold_in(key, 2))
        stem = os.path.join(eval_dir, f"conditional_accuracy_{step:07d}")
        write_json(stem + ".json", {"rows": rows, "classifier_test_accuracy": clf.test_accuracy})
        with open(stem + ".md", "w") as f:
            f.write(accuracy_table(rows, clf.test_accuracy))
        plot_conditional_accuracy(rows, clf.test_accuracy, stem + ".png")
        metrics["conditional_accuracy"] = {f"{r['guidance_scale']:g}": r["accuracy"] for r in rows}
        log("eval: conditional accuracy " + ", ".join(f"w={r['guidance_scale']:g}: {r['accuracy']:.3f}"
                                                      for r in rows))
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(os.path.join(eval_dir, f"metrics_{step:07d}.json"), metrics)
    write_json(os.path.join(eval_dir, "metrics.json"), metrics)
    return metrics


def summary_line(m: dict) -> str:
    """One line naming each number with the protocol it needs (extractor, sample counts)."""
    out = (f"FID {m['fid']:.3f} KID {m['kid']:.5f} ({m['feature_extractor']} features, {m['num_samples']} EMA "
           f"samples vs {m['num_reference']} {m['reference_split']} images"
           f"{'' if m['comparable_with_papers'] else '; not comparable with papers'})")
    if "bpd" in m:
        out += f", {m['bpd']:.3f} bits/dim ({m['bpd_num_images']} test images)"
    if "conditional_accuracy" in m:
        out += ", conditional accuracy " + " ".join(f"w={w}:{a:.3f}" for w, a in m["conditional_accuracy"].items())
    return out


def run_eval(config, workdir: str, log=print, make_generate: Callable | None = None) -> dict:
    """``--mode=eval``: all metrics of the latest checkpoint in ``workdir`` (its EMA parameters),
    written to ``<workdir>/eval/metrics.json`` (see :func:`evaluate_params`).

    Every input is checked first, before anything is compiled or written: the config (including
    ``eval.*``: sample count above the feature dimension, the Inception weights file and its
    shapes), then the presence of a checkpoint."""
    from jaxdiff import checkpoint, config as config_lib
    from jaxdiff.train import Trainer

    config_lib.validate(config)
    validate_eval(config, check_weights=True)
    path = os.path.abspath(workdir or "")
    if not workdir or not os.path.isdir(os.path.join(path, "checkpoints")):
        raise checkpoint.CheckpointError(
            f"no checkpoint in {path}/checkpoints: train first with --mode=train and the same --config and "
            "--workdir, then run --mode=eval")
    mngr = checkpoint.manager(path, read_only=True)
    step = mngr.latest_step()
    if step is None:
        raise checkpoint.CheckpointError(f"no checkpoint in {path}/checkpoints: train first with --mode=train "
                                         "and the same --config and --workdir, then run --mode=eval")
    path = config_lib.check_workdir(path)
    meta = checkpoint.read_meta(mngr, step)
    trainer = Trainer(config, meta["channels"], meta["num_classes"])
    state, _ = checkpoint.restore(mngr, trainer.abstract_state(), step)
    mngr.close()
    log(f"eval: checkpoint {step} of {path} (EMA parameters)")
    return evaluate_params(config, path, state.ema_params, trainer.model, trainer.tables, int(step), log,
                           make_generate)


def make_train_fid_hook(config, workdir: str, model, tables, start_step: int = 0, log=print):
    """The cheap FID logged while training: ``hook(step, ema_params) -> row`` appending
    ``{"step", "fid", "fid_samples", "feature_extractor", "seconds"}`` to
    ``<workdir>/eval/train_fid.jsonl`` (rows after ``start_step`` from an interrupted run are
    dropped first). ``None`` when ``training.eval_every`` is 0.

    Same protocol as ``--mode=eval`` (EMA parameters, uint8 quantisation, cached training-split
    reference statistics, same extractor) with ``eval.train_fid_samples`` samples and no KID;
    FID is biased upwards at small sample counts, so compare these numbers only with each other.
    Everything is built (classifier trained, reference statistics computed, sampler traced) once,
    here; each call only samples and extracts features."""
    ev = config.eval
    if not config.training.get("eval_every", 0):
        return None
    validate_eval(config, check_weights=True)
    train, test, _ = load_splits(config.data)
    image_shape = tuple(train[0].shape[1:])
    extractor, _ = build_extractor(config, workdir, train, test, log, for_accuracy=False)
    ref = reference_statistics(extractor, train[0] if ev.reference_split == "train" else test[0],
                               reference_path(workdir, config.data.dataset, image_shape, ev.reference_split,
                                              extractor), ev.batch_size, log)
    num_classes = int(model.num_classes)
    generate = make_image_generator(model, tables, config.sampling, config.diffusion.target, image_shape,
                                    float(ev.fid_guidance_scale) if num_classes else 1.0, ev.batch_size)
    labels = balanced_labels(ev.train_fid_samples, num_classes)
    path = os.path.join(workdir, "eval", "train_fid.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
        with open(path, "w") as f:
            f.writelines(rows)

    def hook(step: int, params) -> dict:
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM + 1), step)
        images = generate_uint8(generate, params, labels, ev.batch_size, key)
        stats = feature_stats(extract_features(extractor, images, ev.batch_size))
        row = {"step": int(step), "fid": frechet_distance(stats.mu, stats.sigma, ref.stats.mu, ref.stats.sigma),
               "fid_samples": int(len(images)), "feature_extractor": extractor.name,
               "seconds": round(time.perf_counter() - t0, 2)}
        if jax.process_index() == 0:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    return hook
