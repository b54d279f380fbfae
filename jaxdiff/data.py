"""Image sources and the deterministic, resumable batch stream that feeds training.

A *source* is random-access: ``len(source)`` and ``source[indices] -> (images uint8 [n, H, W, C],
labels int32 [n])`` at the configured image size. The example order is a pure function of
``(seed, step)``: epoch ``e`` visits ``permutation(seed, e)`` in global batches of ``B``, dropping the
remainder. So the position of the stream *is* the training step: a resumed run asks for step ``s``
and gets exactly the batch an uninterrupted run would have seen, with no iterator state to save.
Each process reads only its ``1 / process_count`` slice of every global batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, NamedTuple

import numpy as np


class ArraySource(NamedTuple):
    """An in-memory source: ``images`` uint8 ``[N, H, W, C]``, ``labels`` int32 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, indices):
        return self.images[indices], self.labels[indices]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` images to ``size x size`` (bilinear, antialiased), back to uint8."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import jax  # local: keeps this module importable without initialising a backend

    out = jax.image.resize(images.astype(np.float32), (images.shape[0], size, size, images.shape[3]),
                           method="bilinear", antialias=True)
    return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def load_digits(image_size: int = 8) -> ArraySource:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes, values 0..16).

    Pixels are mapped to uint8 by ``round(v * 255 / 16)``; ``image_size != 8`` resizes them.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource(resize_uint8(images, image_size), digits.target.astype(np.int32), 10, "digits")


def load_source(data_config, split: str = "train"):
    """The source named by ``data_config.dataset``, at ``data_config.image_size``."""
    name = data_config.dataset
    if name == "digits":
        return load_digits(data_config.image_size)
    raise ValueError(f"unknown data.dataset {name!r}")


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """Indices of the global batch at ``step``: slice ``step mod E`` of ``permutation(seed, step // E)``,
    where ``E = num_examples // batch_size`` batches make an epoch."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"training.batch_size={batch_size} is larger than the dataset ({num_examples} examples)")
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[i * batch_size:(i + 1) * batch_size]


def batch_stream(source, seed: int, start_step: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, prefetch: int = 2) -> Iterator[dict]:
    """Yield ``{"image": uint8 [B/P, H, W, C], "label": int32 [B/P]}`` for steps ``start_step, ...``:
    this process's slice of each global batch, read ahead by a background thread."""
    if batch_size % process_count:
        raise ValueError(f"training.batch_size={batch_size} does not divide over {process_count} processes")
    local = batch_size // process_count

    def read(step):
        idx = np.sort(batch_indices(seed, step, batch_size, len(source))[
            process_index * local:(process_index + 1) * local])
        images, labels = source[idx]
        return {"image": images, "label": labels}

    q: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    stop = threading.Event()

    def worker():
        step = start_step
        while not stop.is_set():
            try:
                item = read(step)
            except Exception as e:  # surface reader errors in the consumer
                q.put(e)
                return
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()


def preprocess(images, key, random_flip: bool):
    """uint8 ``[B, H, W, C]`` -> float32 in [-1, 1] (``x / 127.5 - 1``), on device.

    With ``random_flip`` each image is mirrored left-right independently with probability 1/2.
    """
    import jax
    import jax.numpy as jnp

    x = images.astype(jnp.float32) / 127.5 - 1.0
    if random_flip:
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x
