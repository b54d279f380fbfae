"""A ``config.data`` block to a source: the checks that run before anything is compiled, and the
dispatch to the readers (``digits``, ``idx``, ``image_folder``, ``cifar_python``, else TFDS)."""

from __future__ import annotations

import os

import numpy as np

from jaxdiff.data.cifar_python import load_cifar_python
from jaxdiff.data.image_files import load_image_folder
from jaxdiff.data.readers import DEBIAN_FASHION_MNIST, LOCAL_DATASETS, load_digits, load_idx
from jaxdiff.data.sources import DataError, LazySource, materialize
from jaxdiff.data.tfds_source import check_tfds_features, load_tfds

# Datasets of handwriting / house numbers: a mirrored digit or letter is not one (never flip these).
NO_FLIP_DATASETS = frozenset({"digits", "mnist", "emnist", "kmnist", "binarized_mnist", "mnist_corrupted",
                              "svhn_cropped", "omniglot"})


def check_data_config(data_config):
    """Raise :class:`DataError` for the first unusable ``config.data`` value, without reading data.

    Checks sizes and switches, that the dataset name is a local source or a registered TFDS image
    dataset, that local sources have an existing ``data_dir``, and that digits are never flipped.
    Returns the TFDS builder it made for a TFDS dataset (``None`` for a local source).
    """
    d = data_config
    if not isinstance(d.image_size, int) or d.image_size <= 0:
        raise DataError("data.image_size must be a positive integer (28 for MNIST, 32 for CIFAR-10), "
                        f"got {d.image_size!r}")
    if d.channels not in (0, 1, 3):
        raise DataError(f"data.channels must be 0 (the dataset's own), 1 (grayscale) or 3 (RGB), got {d.channels!r}")
    for field in ("num_workers", "prefetch"):
        if not isinstance(d[field], int) or d[field] < 1:
            raise DataError(f"data.{field} must be a positive integer, got {d[field]!r}")
    if not isinstance(d.cache_max_mb, int) or d.cache_max_mb < 0:
        raise DataError(f"data.cache_max_mb must be a non-negative integer, got {d.cache_max_mb!r}")
    name = d.dataset
    if not isinstance(name, str) or not name:
        raise DataError("data.dataset is empty: name a TFDS dataset or one of " + ", ".join(LOCAL_DATASETS))
    base = name.split(":")[0].split("/")[0]
    if d.random_flip and base in NO_FLIP_DATASETS:
        raise DataError(f"data.random_flip=True on {name!r}: mirrored digits and letters are not digits and "
                        "letters; set --config.data.random_flip=False")
    if name in ("idx", "image_folder", "cifar_python"):
        if not d.data_dir:
            example = DEBIAN_FASHION_MNIST if name == "idx" else "/path/to/folder"
            raise DataError(f"data.dataset={name!r} reads files: set --config.data.data_dir (e.g. {example})")
        if not os.path.isdir(os.path.expanduser(d.data_dir)):
            fix = (" (`apt-get install dataset-fashion-mnist` installs it)"
                   if os.path.abspath(os.path.expanduser(d.data_dir)) == DEBIAN_FASHION_MNIST else "")
            raise DataError(f"data.data_dir={d.data_dir!r} does not exist{fix}")
    elif name != "digits":
        return check_tfds_features(d)
    return None


def _estimated_mb(source) -> float:
    return len(source) * int(np.prod(source.image_shape)) / 2**20


def load_source(data_config, split: str = "train"):
    """The source named by ``data_config.dataset`` for ``split``, at ``data_config.image_size``.

    Raises :class:`DataError` (one line: what is wrong, how to fix it) before anything is compiled.
    Lazy sources whose decoded images fit in ``data.cache_max_mb`` are decoded into memory now.
    """
    tfds_builder = check_data_config(data_config)
    d = data_config
    name, size, channels = d.dataset, d.image_size, d.channels
    data_dir = os.path.expanduser(d.data_dir)
    if name == "digits":
        if split not in ("train", "test"):
            raise DataError(f"digits has splits 'train' and 'test' (both are all 1,797 images), not {split!r}")
        source = load_digits(size, channels)
    elif name == "idx":
        source = load_idx(data_dir, split, size, channels)
    elif name == "image_folder":
        source = load_image_folder(data_dir, split, size, channels)
    elif name == "cifar_python":
        source = load_cifar_python(data_dir, split, size, channels)
    else:
        source = load_tfds(d, split, tfds_builder)
    if isinstance(source, LazySource) and _estimated_mb(source) <= d.cache_max_mb:
        source = materialize(source, d.num_workers)
    return source
