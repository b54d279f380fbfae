"""CIFAR-10 and CIFAR-100 in their "python version" (``data.dataset=cifar_python``): Python pickles,
read by a restricted unpickler that runs no code from the file (:mod:`jaxdiff.common.restricted_pickle`).

Every failure a user can cause (missing folder, empty or corrupt file, wrong layout) is a
:class:`~jaxdiff.data.sources.DataError` whose one line says what is wrong and how to fix it.
"""

from __future__ import annotations

import os
import tarfile
import zlib

import numpy as np

from jaxdiff.common import restricted_pickle
from jaxdiff.common.errors import one_line
from jaxdiff.data.sources import ArraySource, DataError, resize_uint8


def load_cifar_python(directory: str, split: str = "train", image_size: int = 32,
                      channels: int = 0) -> ArraySource:
    """CIFAR-10 or CIFAR-100 in the "python version" of https://www.cs.toronto.edu/~kriz/cifar.html.

    ``directory`` holds ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``;
    what ``torchvision.datasets.CIFAR10(root)`` downloads), ``cifar-100-python/`` (``train``, ``test``,
    ``meta``; fine labels), those files themselves, or the ``.tar.gz`` they come in. The batches are
    Python pickles, read by a restricted unpickler that builds dicts, lists, bytes, ints and NumPy arrays
    and nothing else (:mod:`jaxdiff.common.restricted_pickle`): a file that names any other global is
    refused before it is imported, so no file runs code.
    """
    if split not in ("train", "test"):
        raise DataError(f"CIFAR comes in splits 'train' and 'test', not {split!r}")
    if not os.path.isdir(directory):
        raise DataError(f"data.data_dir={directory!r} is not a directory (it should hold cifar-10-batches-py/)")
    layouts = {  # folder -> (train files, test files, meta file, label key, names key)
        "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                                b"labels", b"label_names"),
        "cifar-100-python": (["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
    }
    for folder, (train, test, meta, label_key, names_key) in layouts.items():
        files = train if split == "train" else test
        for base in (os.path.join(directory, folder), directory):
            if all(os.path.isfile(os.path.join(base, f)) for f in files + [meta]):
                read = lambda f, base=base: _unpickle(os.path.join(base, f))  # noqa: E731
                break
        else:
            tar = os.path.join(directory, folder.replace("-batches-py", "-python") + ".tar.gz")
            if not os.path.isfile(tar):
                continue
            read = _tar_reader(tar, folder)
        batches = [read(f) for f in files]
        try:
            data = np.concatenate([_cifar_images(b[b"data"]) for b in batches])
            labels = np.concatenate([_cifar_labels(b[label_key]) for b in batches])
            names = tuple(n.decode() for n in read(meta)[names_key])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"CIFAR files in {directory} are not the python version "
                            f"({one_line(e, 100)})") from None
        if data.shape[0] != labels.shape[0] or (len(labels) and labels.max() >= len(names)):
            raise DataError(f"CIFAR files in {directory} hold {data.shape[0]} images, {labels.shape[0]} labels "
                            f"and {len(names)} class names: the batches do not fit together")
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return ArraySource(resize_uint8(images, image_size, channels), labels, len(names),
                           f"cifar_python:{directory}", names)
    raise DataError(f"no CIFAR python batches in {directory}: expected cifar-10-batches-py/ (or "
                    "cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html")


# What a CIFAR batch may hold: dicts, lists, bytes and ints, and NumPy arrays of plain dtypes.
CIFAR_PICKLE = "a CIFAR batch holds dicts, lists, bytes, ints and NumPy arrays only"
MAX_CIFAR_MEMBER = 256 << 20  # bytes: CIFAR-100's train batch, the largest, is 155 MB


def _cifar_batch(data: bytes) -> dict:
    """The dict of one CIFAR batch or meta file (a Python 2 pickle), read without running code from it
    (:mod:`jaxdiff.common.restricted_pickle`); :class:`DataError` otherwise."""
    out = restricted_pickle.load(data, restricted_pickle.NUMPY_ARRAYS, DataError, CIFAR_PICKLE, encoding="bytes")
    if not isinstance(out, dict):
        raise DataError(f"holds a {type(out).__name__}, not a CIFAR batch's dict")
    return out


def _cifar_images(data) -> np.ndarray:
    """A batch's ``data``: a uint8 array ``[N, 3072]`` (``TypeError`` otherwise)."""
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise TypeError(f"data is {type(data).__name__} {getattr(data, 'dtype', '')}{getattr(data, 'shape', '')}, "
                        "not uint8 [N, 3072]")
    return data


def _cifar_labels(labels) -> np.ndarray:
    """A batch's labels: a list of ints in [0, 100) (``TypeError`` otherwise)."""
    if not (isinstance(labels, list) and all(type(v) is int and 0 <= v < 100 for v in labels)):
        raise TypeError("labels are not a list of class ids")
    return np.asarray(labels, np.int32)


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return _cifar_batch(f.read())
    except OSError as e:
        raise DataError(f"CIFAR batch {path} cannot be read ({e.strerror or e})") from None
    except DataError as e:
        raise DataError(f"CIFAR batch {path}: {e}; download it again from the CIFAR page") from None


def _tar_reader(tar_path, folder):
    """``read(name)``: the batch ``<folder>/name`` of the ``.tar.gz`` at ``tar_path``, its members listed
    once and each read when asked for (regular files of at most :data:`MAX_CIFAR_MEMBER` bytes)."""
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DataError(f"{tar_path} is corrupt ({one_line(e)}); download it again") from None

    def read(name):
        if name not in members:
            raise DataError(f"{tar_path} has no {folder}/{name}")
        if members[name].size > MAX_CIFAR_MEMBER:
            raise DataError(f"{tar_path}: {name} claims {members[name].size:,} bytes, more than a CIFAR batch")
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                data = tar.extractfile(members[name].name).read()
        except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
            raise DataError(f"{tar_path} is corrupt ({one_line(e)}); download it again") from None
        try:
            return _cifar_batch(data)
        except DataError as e:
            raise DataError(f"{tar_path}: {name}: {e}; download it again from the CIFAR page") from None

    return read
