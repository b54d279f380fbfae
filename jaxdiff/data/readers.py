"""Readers of local image files into sources: scikit-learn's embedded digits, MNIST-format idx
files, a folder of images, and CIFAR's "python version" batches.

Every failure a user can cause (missing folder, empty or corrupt file, wrong layout) is a
:class:`~jaxdiff.data.sources.DataError` whose one line says what is wrong and how to fix it.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import struct
import tarfile
import warnings
import zlib

import numpy as np
from PIL import Image

from jaxdiff.common import restricted_pickle
from jaxdiff.common.errors import one_line
from jaxdiff.data.sources import ArraySource, DataError, LazySource, fit_image, resize_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})


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


def scan_image_folder(directory: str, split: str = "train") -> tuple[list[str], np.ndarray, tuple]:
    """``(paths, labels, class_names)`` of the images under ``directory``.

    ``directory/<split>/`` is used when it exists (otherwise only split "train" is available, as the
    whole folder). Images directly in the folder are unlabelled (``class_names == ()``); otherwise each
    sub-folder that holds images (at any depth) is one class, in sorted order. A symbolic link that
    resolves outside ``directory`` is a :class:`DataError` (links inside it are read).
    """
    if not os.path.isdir(directory):
        raise DataError(f"data.data_dir={directory!r} is not a directory of images")
    root = os.path.join(directory, split)
    if not os.path.isdir(root):
        if split != "train":
            raise DataError(f"split {split!r} needs a sub-folder {root} (the whole of {directory} is split 'train')")
        root = directory
    is_image = lambda name: name.lower().endswith(IMAGE_EXTENSIONS)  # noqa: E731
    entries = sorted(os.listdir(root))
    top = [os.path.join(root, n) for n in entries if is_image(n) and os.path.isfile(os.path.join(root, n))]
    classes = []
    for n in entries:
        sub = os.path.join(root, n)
        if os.path.isdir(sub):
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sub) for f in fs if is_image(f))
            if files:
                classes.append((n, files))
    inside = os.path.realpath(directory) + os.sep
    for path in top + [p for _, files in classes for p in files]:
        if not os.path.realpath(path).startswith(inside):
            raise DataError(f"{path} links to {os.path.realpath(path)}, outside data.data_dir={directory!r}: links "
                            "that leave the data folder are not followed (copy the file in, or point data.data_dir "
                            "at a folder that holds it)")
    if top and classes:
        raise DataError(f"{root} mixes images ({os.path.basename(top[0])}, ...) with class sub-folders "
                        f"({classes[0][0]}, ...): put every image in a class folder, or none")
    if classes:
        paths = [p for _, files in classes for p in files]
        labels = np.concatenate([np.full(len(files), k, np.int32) for k, (_, files) in enumerate(classes)])
        return paths, labels, tuple(n for n, _ in classes)
    if not top:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return top, np.zeros(len(top), np.int32), ()


def _decompression_bomb_line(path, im=None) -> str:
    size = f" ({im.width}x{im.height})" if im is not None else ""
    return (f"{path}{size} has more pixels than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS:,}): not a training image; remove it, or raise the limit if you trust it")


def _open_image(path: str):
    """PIL's image of the file at ``path``, opened from its bytes in memory: a damaged chunk length
    then reads what the file holds, where a file object's ``read(n)`` would allocate the ``n`` bytes
    asked for."""
    with open(path, "rb") as f:
        return Image.open(io.BytesIO(f.read()))


def image_mode(path: str) -> str:
    """The PIL mode of the image file at ``path``, from its header; :class:`DataError` naming the file
    for anything that is not an image PIL reads, or one above PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, its warning band included). Call it from one thread: it turns
    PIL's warning into an error with :func:`warnings.catch_warnings`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # the header only (a large folder is not read whole at start)
                return im.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(_decompression_bomb_line(path)) from None
    except Exception as e:  # noqa: BLE001 (PIL's plugins fail in many ways on a damaged or foreign file)
        raise DataError(f"{path} is not a readable image ({one_line(e)}); remove or replace it") from None


def read_image(path: str, channels: int) -> np.ndarray:
    """uint8 ``[H, W, channels]`` (1: grayscale, 3: RGB) of the image file at ``path``; :class:`DataError`
    naming the file for anything that is not a decodable image of at most ``PIL.Image.MAX_IMAGE_PIXELS``
    pixels (checked from the header, before decoding)."""
    try:
        with _open_image(path) as im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise DataError(_decompression_bomb_line(path, im))
            return np.asarray(im.convert("L" if channels == 1 else "RGB")).reshape(im.height, im.width, channels)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(_decompression_bomb_line(path)) from None
    except Exception as e:  # noqa: BLE001 (PIL's decoders fail in many ways on a damaged file)
        raise DataError(f"{path} cannot be decoded ({one_line(e)}); remove or replace it") from None


def load_image_folder(directory: str, split: str = "train", image_size: int = 64,
                      channels: int = 0) -> LazySource:
    """A :class:`LazySource` over a folder of images (see :func:`scan_image_folder`).

    Every file's header is opened once here (:func:`image_mode`), so a file that is not an image, or
    a decompression bomb, fails now, with its name; ``channels=0`` picks 1 when every image is
    grayscale, else 3.
    """
    paths, labels, class_names = scan_image_folder(directory, split)
    gray = all([image_mode(p) in _GRAY_MODES for p in paths])  # a list: every header is checked
    c = channels or (1 if gray else 3)

    def read_one(i):
        return fit_image(read_image(paths[i], c), image_size), int(labels[i])

    return LazySource(read_one, len(paths), len(class_names), f"image_folder:{directory}",
                      (image_size, image_size, c), class_names)


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
