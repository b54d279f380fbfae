"""The registry of local dataset readers: :data:`LOCAL_READERS`, a dataset name -> :class:`LocalReader`
(the reader and whether it reads files from a ``data_dir``). A new local reader is one function in a
module of :mod:`jaxdiff.data` and one line here."""

from __future__ import annotations

from typing import Callable, NamedTuple

from jaxdiff.data.cifar_python import load_cifar_python
from jaxdiff.data.image_files import load_image_folder
from jaxdiff.data.readers import DEBIAN_FASHION_MNIST, load_digits, load_idx
from jaxdiff.data.sources import DataError


class LocalReader(NamedTuple):
    """A local dataset: ``read(data_dir, split, image_size, channels) -> source``; ``needs_data_dir``:
    whether it reads files from ``data_dir`` (``example_dir``: a folder to suggest when none is given)."""

    read: Callable
    needs_data_dir: bool
    example_dir: str = "/path/to/folder"


def _read_digits(data_dir: str, split: str, image_size: int, channels: int):
    """scikit-learn's digits (no files): ``train`` and ``test`` are both all 1,797 images."""
    if split not in ("train", "test"):
        raise DataError(f"digits has splits 'train' and 'test' (both are all 1,797 images), not {split!r}")
    return load_digits(image_size, channels)


LOCAL_READERS = {
    "digits": LocalReader(_read_digits, needs_data_dir=False),
    "idx": LocalReader(load_idx, needs_data_dir=True, example_dir=DEBIAN_FASHION_MNIST),
    "image_folder": LocalReader(load_image_folder, needs_data_dir=True),
    "cifar_python": LocalReader(load_cifar_python, needs_data_dir=True),
}
LOCAL_DATASETS = tuple(LOCAL_READERS)
