"""A dataset by name -> its source: the checks that run before anything is read, and the dispatch to
the local readers (:data:`~jaxdiff.data.local_sources.LOCAL_READERS`), else TFDS.

Every function takes plain arguments (``jaxdiff.drivers.data_config`` turns a ``config.data`` block
into them)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from jaxdiff.data.local_sources import LOCAL_DATASETS, LOCAL_READERS
from jaxdiff.data.readers import DEBIAN_FASHION_MNIST
from jaxdiff.data.sources import DataError, LazySource, materialize
from jaxdiff.data.tfds_source import check_tfds_features, load_tfds

# Datasets of handwriting / house numbers: a mirrored digit or letter is not one (never flip these).
NO_FLIP_DATASETS = frozenset({"digits", "mnist", "emnist", "kmnist", "binarized_mnist", "mnist_corrupted",
                              "svhn_cropped", "omniglot"})


def check_image_args(image_size, channels) -> None:
    """Raise :class:`DataError` unless ``image_size`` is a positive integer and ``channels`` 0, 1 or 3."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise DataError("data.image_size must be a positive integer (28 for MNIST, 32 for CIFAR-10), "
                        f"got {image_size!r}")
    if channels not in (0, 1, 3):
        raise DataError(f"data.channels must be 0 (the dataset's own), 1 (grayscale) or 3 (RGB), got {channels!r}")


def check_loader_args(num_workers, cache_max_mb, prefetch=1) -> None:
    """Raise :class:`DataError` unless ``num_workers`` and ``prefetch`` (batches made ahead) are positive
    and ``cache_max_mb`` non-negative."""
    for field, value in (("num_workers", num_workers), ("prefetch", prefetch)):
        if not isinstance(value, int) or value < 1:
            raise DataError(f"data.{field} must be a positive integer, got {value!r}")
    if not isinstance(cache_max_mb, int) or cache_max_mb < 0:
        raise DataError(f"data.cache_max_mb must be a non-negative integer, got {cache_max_mb!r}")


def check_flip(name, random_flip) -> None:
    """Raise :class:`DataError` when ``random_flip`` would mirror a dataset of digits or letters."""
    base = name.split(":")[0].split("/")[0] if isinstance(name, str) else None
    if random_flip and base in NO_FLIP_DATASETS:
        raise DataError(f"data.random_flip=True on {name!r}: mirrored digits and letters are not digits and "
                        "letters; set --config.data.random_flip=False")


def check_dataset(name, data_dir: str = "", image_key: str = "image", random_flip: bool = False):
    """Raise :class:`DataError` unless ``name`` is a local source (with an existing ``data_dir`` when it
    reads files) or a registered TFDS image dataset (image feature ``image_key``), and unless
    ``random_flip`` is off for digits and letters. Returns the TFDS builder it made for a TFDS dataset
    (``None`` for a local source); nothing is read."""
    if not isinstance(name, str) or not name:
        raise DataError("data.dataset is empty: name a TFDS dataset or one of " + ", ".join(LOCAL_DATASETS))
    check_flip(name, random_flip)
    reader = LOCAL_READERS.get(name)
    if reader is None:
        return check_tfds_features(name, data_dir, image_key)
    if reader.needs_data_dir:
        if not data_dir:
            raise DataError(f"data.dataset={name!r} reads files: set --config.data.data_dir (e.g. "
                            f"{reader.example_dir})")
        if not os.path.isdir(os.path.expanduser(data_dir)):
            fix = (" (`apt-get install dataset-fashion-mnist` installs it)"
                   if os.path.abspath(os.path.expanduser(data_dir)) == DEBIAN_FASHION_MNIST else "")
            raise DataError(f"data.data_dir={data_dir!r} does not exist{fix}")
    return None


def _estimated_mb(source) -> float:
    return len(source) * int(np.prod(source.image_shape)) / 2**20


def _block_arguments(data_config) -> tuple[str, dict]:
    """The dataset name and :func:`load_source` keyword arguments of a ``config.data`` block (the
    deprecated call form), after the block's own checks (flips, prefetch)."""
    d = data_config
    check_image_args(d.image_size, d.channels)
    check_loader_args(d.num_workers, d.cache_max_mb, d.prefetch)
    check_flip(d.dataset, d.random_flip)
    return d.dataset, dict(image_size=d.image_size, data_dir=d.data_dir, channels=d.channels, download=d.download,
                           image_key=d.image_key, label_key=d.label_key, cache_max_mb=d.cache_max_mb,
                           num_workers=d.num_workers)


def load_source(name, split: str = "train", *, image_size: int | None = None, data_dir: str = "",
                channels: int = 0, download: bool = False, image_key: str = "image", label_key: str = "label",
                cache_max_mb: int = 1024, num_workers: int = 2):
    """The source of dataset ``name`` (a local reader's name, else a TFDS dataset) for ``split``, its
    images fitted to ``image_size`` and ``channels`` (0: the dataset's own); ``data_dir`` holds the files
    (local readers) or the prepared TFDS datasets, which are downloaded first when ``download``. TFDS
    images are feature ``image_key`` and labels ``label_key``.

    Raises :class:`DataError` (one line: what is wrong, how to fix it) before anything is compiled.
    Lazy sources whose decoded images fit in ``cache_max_mb`` MiB are decoded into memory now, with
    ``num_workers`` threads.

    Deprecated: ``load_source(data_config, split)`` with a ``config.data`` block (a
    ``DeprecationWarning``; use :func:`jaxdiff.drivers.data_config.load_source`, or these arguments).
    """
    if not isinstance(name, str) and hasattr(name, "dataset"):
        warnings.warn("load_source(config.data, split) is deprecated: pass the dataset name and keyword "
                      "arguments (load_source(name, split, image_size=..., data_dir=..., ...)), or use "
                      "jaxdiff.drivers.data_config.load_source(config.data, split)", DeprecationWarning, stacklevel=2)
        name, arguments = _block_arguments(name)
        return load_source(name, split, **arguments)
    check_image_args(image_size, channels)
    check_loader_args(num_workers, cache_max_mb)
    tfds_builder = check_dataset(name, data_dir, image_key)
    reader = LOCAL_READERS.get(name)
    if reader is not None:
        source = reader.read(os.path.expanduser(data_dir), split, image_size, channels)
    else:
        source = load_tfds(name, split, image_size=image_size, data_dir=data_dir,
                           channels=channels, download=download, image_key=image_key, label_key=label_key,
                           builder=tfds_builder)
    if isinstance(source, LazySource) and _estimated_mb(source) <= cache_max_mb:
        source = materialize(source, num_workers)
    return source
