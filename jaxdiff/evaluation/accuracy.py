"""Conditional accuracy: how often a classifier assigns class-conditional samples to the class
they were asked for, against the guidance scale."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import paths
from jaxdiff.common.chunks import map_chunks
from jaxdiff.common.plotting import to_uint8
from jaxdiff.evaluation import classifier as classifier_lib


def generate_uint8(generate, params, labels: np.ndarray, batch_size: int, key: jax.Array,
                   progress=None, should_stop=None) -> np.ndarray:
    """``len(labels)`` quantised samples from ``generate(params, key, labels)`` in fixed-size chunks
    (the last padded, padding dropped); chunk ``i`` uses ``fold_in(key, i)``; ``progress`` as
    :func:`jaxdiff.common.chunks.map_chunks` takes it. With ``should_stop``, ``generate`` is called
    as ``generate(params, key, labels, should_stop)`` (it polls it inside a chunk)."""
    def chunk_images(i, chunk):
        args = (params, jax.random.fold_in(key, i), jnp.asarray(chunk))
        return to_uint8(jax.device_get(generate(*args) if should_stop is None else generate(*args, should_stop)))

    return map_chunks(chunk_images, np.asarray(labels, np.int32), batch_size, progress)


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """``0, 1, ..., K-1, 0, 1, ...`` (``n`` labels; zeros for an unconditional model)."""
    return np.arange(n, dtype=np.int32) % max(num_classes, 1)


def conditional_accuracy(make_generate: Callable[[float], Callable], params, classify: Callable,
                         num_classes: int, per_class: int, scales, batch_size: int, key: jax.Array,
                         progress=None, should_stop=None) -> list:
    """For each guidance scale ``w``: the share of ``per_class`` samples of every class that
    ``classify`` (uint8 images -> logits) assigns to the class asked for, overall and per class.
    ``make_generate(w)`` gives a compiled ``generate(params, key, labels)`` (see above)."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    rows = []
    for j, w in enumerate(scales):
        images = generate_uint8(make_generate(float(w)), params, labels, batch_size, jax.random.fold_in(key, j),
                                progress, should_stop)
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


def plot_conditional_accuracy(rows: list, classifier_accuracy: float, path: paths.PathLike) -> None:
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
    paths.save_figure(fig, path)
    plt.close(fig)
