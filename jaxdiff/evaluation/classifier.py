"""A small CNN classifier: the feature space of FID on MNIST-family data, and the judge of
class-conditional samples.

jaxdiff trains it on the training split of the dataset being modelled, reports its accuracy on the
test split, and caches the parameters (``flax.serialization`` msgpack) with a JSON record of what it
was trained on. FID in its 128-d penultimate feature space ("classifier FID") tracks sample quality
on that dataset, but it is **not** comparable with FIDs in papers, which use InceptionV3 features.

Network (inputs uint8 ``[B, H, W, C]``, scaled to ``x / 127.5 - 1``)::

    conv3x3(ch) relu, conv3x3(ch) relu,
    conv3x3(2ch, stride 2) relu, conv3x3(2ch) relu,
    conv3x3(4ch, stride 2) relu,
    global mean pool -> dense(features) relu  == the features
    -> dropout -> dense(num_classes)          == the logits

Training: cross-entropy with Adam, minibatches drawn by a NumPy generator seeded from ``seed``,
so the cached classifier is a pure function of (data, hyper-parameters, seed).
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.common import paths
from jaxdiff.common.chunks import map_chunks
from jaxdiff.common.errors import one_line


class ClassifierCNN(nn.Module):
    """``__call__(images uint8 [B,H,W,C], train) -> (logits [B, num_classes], features [B, features])``."""

    num_classes: int
    ch: int = 32
    features: int = 128
    dropout: float = 0.2

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for ch, stride in ((self.ch, 1), (self.ch, 1), (2 * self.ch, 2), (2 * self.ch, 1), (4 * self.ch, 2)):
            x = nn.relu(nn.Conv(ch, (3, 3), strides=(stride, stride), padding="SAME")(x))
        feats = nn.relu(nn.Dense(self.features, name="features")(jnp.mean(x, axis=(1, 2))))
        h = nn.Dropout(self.dropout, deterministic=not train)(feats)
        return nn.Dense(self.num_classes, name="logits")(h), feats


class ClassifierSpec(NamedTuple):
    """Everything the trained classifier depends on; its hash names the cache file."""

    dataset: str
    image_shape: tuple
    num_classes: int
    num_train: int
    ch: int
    features: int
    steps: int
    batch_size: int
    learning_rate: float
    seed: int

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self._asdict(), sort_keys=True, default=list).encode()).hexdigest()[:12]


class TrainedClassifier(NamedTuple):
    """A trained classifier: ``model``, ``params``, its ``spec`` and held-out ``test_accuracy``."""

    model: ClassifierCNN
    params: dict
    spec: ClassifierSpec
    test_accuracy: float
    num_test: int

    def apply_fn(self):
        """Compiled ``images uint8 -> (logits, features)``."""
        return jax.jit(lambda images: self.model.apply({"params": self.params}, images, train=False))


def train_classifier(spec: ClassifierSpec, train_source, progress=None):
    """Train :class:`ClassifierCNN` by Adam on softmax cross-entropy; returns ``(model, params)``.

    ``train_source`` is random-access (``source[indices] -> (uint8 images, int labels)``, such as a
    :mod:`jaxdiff.data` source): only the minibatches are read. ``progress`` (a ``tqdm`` bar, or
    anything with ``update(n)``) is advanced once per step.

    Step ``s`` uses the minibatch ``rng.choice(N, batch_size)`` of ``default_rng([seed, s])`` and
    dropout key ``fold_in(PRNGKey(seed), s)``.
    """
    model = ClassifierCNN(spec.num_classes, spec.ch, spec.features)
    params = model.init(jax.random.PRNGKey(spec.seed), jnp.zeros((1,) + tuple(spec.image_shape), jnp.uint8))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(spec.learning_rate, spec.steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    base = jax.random.PRNGKey(spec.seed)
    n = len(train_source)
    for s in range(spec.steps):
        idx = np.random.default_rng([spec.seed, s]).choice(n, min(spec.batch_size, n), replace=False)
        images, labels = train_source[idx]
        params, opt_state, _ = step(params, opt_state, np.asarray(images), np.asarray(labels),
                                    jax.random.fold_in(base, s))
        if progress is not None:
            progress.update(1)
    return model, params


def batched_apply(fn, images: np.ndarray, batch_size: int):
    """Apply a compiled ``fn(images [batch_size, ...]) -> pytree of [batch_size, ...]`` to all of
    ``images`` in fixed-size batches (last one padded, padding dropped); returns NumPy arrays."""
    return map_chunks(lambda _, chunk: fn(chunk), images, batch_size)


def accuracy(apply_fn, source, batch_size: int = 256) -> float:
    """Share of the images of ``source`` (``source[indices] -> (images, labels)``) whose arg-max
    logit is the label, read batch by batch."""
    n, hits = len(source), 0
    for start in range(0, n, batch_size):
        images, labels = source[np.arange(start, min(start + batch_size, n))]
        logits, _ = batched_apply(apply_fn, np.asarray(images), batch_size)
        hits += int(np.sum(np.argmax(logits, axis=-1) == np.asarray(labels)))
    return hits / n


def cache_paths(cache_dir: paths.PathLike, spec: ClassifierSpec):
    """``(params .msgpack, record .json)`` paths (``epath``) of ``spec`` under ``cache_dir``."""
    stem = f"classifier_{spec.dataset}_{spec.fingerprint()}"
    cache_dir = paths.as_path(cache_dir)
    return cache_dir / (stem + ".msgpack"), cache_dir / (stem + ".json")


def get_classifier(spec: ClassifierSpec, train_source, test_source, cache_dir: paths.PathLike,
                   log=print, progress=None) -> TrainedClassifier:
    """Load the classifier of ``spec`` from ``cache_dir``, or train, evaluate and cache it.

    ``train_source`` / ``test_source`` are random-access sources (``source[indices] -> (uint8
    images, labels)``); nothing is read when the cache holds the classifier. The cache is keyed by the
    fingerprint of ``spec`` (data set, shape, size of the training split, hyper-parameters, seed);
    process 0 writes it.
    """
    params_path, record_path = cache_paths(cache_dir, spec)
    model = ClassifierCNN(spec.num_classes, spec.ch, spec.features)
    if params_path.exists() and record_path.exists():
        template = jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(spec.image_shape), jnp.uint8)))["params"]
        try:  # flax's msgpack and JSON: data only; a damaged cache is retrained
            record = json.loads(record_path.read_text())
            params = flax.serialization.from_bytes(template, params_path.read_bytes())
            if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, template):
                raise ValueError("the cached parameters have other shapes than the classifier's")
            log(f"classifier: loaded {params_path} (test accuracy {record['test_accuracy']:.4f})")
            return TrainedClassifier(model, params, spec, float(record["test_accuracy"]), int(record["num_test"]))
        except Exception as e:  # noqa: BLE001 (msgpack, JSON and flax fail in many ways on a damaged file)
            log(f"classifier: the cache in {cache_dir} cannot be used ({one_line(e)}): training again")

    log(f"classifier: training on {spec.num_train} {spec.dataset} images for {spec.steps} steps")
    model, params = train_classifier(spec, train_source, progress)
    clf = TrainedClassifier(model, params, spec, 0.0, len(test_source))
    acc = accuracy(clf.apply_fn(), test_source)
    clf = clf._replace(test_accuracy=acc)
    log(f"classifier: test accuracy {acc:.4f} on {len(test_source)} held-out images")
    if paths.is_writer():
        paths.write_bytes(params_path, flax.serialization.to_bytes(params))
        paths.write_text(record_path, json.dumps({"spec": spec._asdict(), "test_accuracy": acc,
                                                  "num_test": len(test_source)}, indent=1))
    return clf
