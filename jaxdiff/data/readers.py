"""Readers of labelled digit arrays into sources: scikit-learn's embedded digits and MNIST-format idx
files. The other local readers are :mod:`jaxdiff.data.image_files` (a folder of images) and
:mod:`jaxdiff.data.cifar_python` (CIFAR's "python version" batches); :mod:`jaxdiff.data.local_sources`
registers them all by name.

Every failure a user can cause (missing folder, empty or corrupt file, wrong layout) is a
:class:`~jaxdiff.data.sources.DataError` whose one line says what is wrong and how to fix it.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib

import numpy as np

from jaxdiff.common.errors import one_line
from jaxdiff.data.sources import ArraySource, DataError, resize_uint8

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def load_digits(image_size: int = 8, channels: int = 0) -> ArraySource:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes, values 0..16).

    Pixels are mapped to uint8 by ``round(v * 255 / 16)``; ``image_size != 8`` resizes them.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource(resize_uint8(images, image_size, channels), digits.target.astype(np.int32), 10,
                       "digits", tuple(str(d) for d in range(10)))


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """Read one idx file (LeCun's MNIST format), gzip-compressed or not.

    Layout: two zero bytes, a type byte (0x08 = uint8, ...), the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the row-major data. Anything else is a :class:`DataError`.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"idx file {path} does not exist") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"idx file {path} is corrupt ({one_line(e)}); download or reinstall it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path} is not an idx file (its first 4 bytes are {raw[:4].hex() or 'missing'}, "
                        "expected 0000 then a type byte 08..0e and a dimension count)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a crafted header cannot overflow
    if len(raw) - header != expected:
        raise DataError(f"idx file {path} is corrupt: its header says shape {dims} ({expected} bytes) but it "
                        f"holds {len(raw) - header} bytes of data; download or reinstall it")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(directory: str, split: str) -> tuple[str, str]:
    """``(images, labels)`` paths for ``split`` in ``directory``: ``train-*`` for "train", ``t10k-*``
    (or ``test-*``) for "test"; ``.gz`` or not, ``-idx3-ubyte`` or ``.idx3-ubyte``, any name prefix
    (``emnist-letters-train-...``)."""
    prefixes = {"train": ("train",), "test": ("t10k", "test")}.get(split)
    if prefixes is None:
        raise DataError(f"idx files come in splits 'train' and 'test', not {split!r}")
    if not os.path.isdir(directory):
        raise DataError(f"data.data_dir={directory!r} is not a directory; point it at the folder holding "
                        "train-images-idx3-ubyte.gz (Debian's dataset-fashion-mnist: " + DEBIAN_FASHION_MNIST + ")")
    names = sorted(os.listdir(directory))

    def pick(kind, dim):
        pattern = re.compile(rf"^(.*-)?({'|'.join(prefixes)})-{kind}[-.]idx{dim}-ubyte(\.gz)?$")
        found = [n for n in names if pattern.match(n)]
        plain = [n for n in found if not n.endswith(".gz")]
        found = plain or found  # both present: the uncompressed copy is faster to read
        if len(found) != 1:
            what = "no file" if not found else f"{len(found)} files ({', '.join(found)})"
            raise DataError(f"{what} matching {prefixes[0]}-{kind}-idx{dim}-ubyte[.gz] in {directory} "
                            f"(it holds: {', '.join(names[:8]) or 'nothing'}{', ...' if len(names) > 8 else ''})")
        return os.path.join(directory, found[0])

    return pick("images", 3), pick("labels", 1)


def load_idx(directory: str, split: str = "train", image_size: int = 28, channels: int = 0) -> ArraySource:
    """MNIST-format idx images + labels from ``directory`` (see :func:`find_idx_files`).

    ``num_classes = max(label) + 1``. Images are ``[N, H, W]`` (or ``[N, H, W, C]``) uint8.
    """
    images_path, labels_path = find_idx_files(directory, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{images_path} holds {images.dtype} data of shape {images.shape}, expected uint8 [N, H, W]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path} holds {labels.shape} labels for {images.shape[0]} images in {images_path}")
    if images.shape[0] == 0:
        raise DataError(f"{images_path} holds no images")
    if images.ndim == 3:
        images = images[..., None]
    labels = labels.astype(np.int32)
    if labels.min() < 0:
        raise DataError(f"{labels_path} holds negative labels")
    num_classes = int(labels.max()) + 1
    return ArraySource(resize_uint8(images, image_size, channels), labels, num_classes,
                       f"idx:{directory}", tuple(str(k) for k in range(num_classes)))
