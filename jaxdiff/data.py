"""Image sources and the deterministic, resumable batch stream that feeds training.

**Sources.** A *source* is random-access: ``len(source)``, ``source[indices] -> (images uint8
[n, S, S, C], labels int32 [n])`` at ``S = data.image_size``, plus ``num_classes`` (0 = unlabelled),
``image_shape``, ``name`` and ``class_names``. :func:`load_source` builds one from ``config.data``:

============== =====================================================================================
``digits``      scikit-learn's embedded 8x8 digits (no file, no download)
``idx``         a folder of MNIST-format idx files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``):
                Debian's ``dataset-fashion-mnist``, or MNIST / KMNIST / EMNIST downloaded by hand
``image_folder`` a folder of images, optionally one sub-folder per class (sub-folder name = class)
``cifar_python`` the "python version" of CIFAR-10 / CIFAR-100 (``cifar-10-batches-py/``, or its tarball)
anything else   a TFDS dataset by name, read with ``tfds.data_source`` (ArrayRecord random access;
                no TensorFlow needed to *read*), from ``data.data_dir``
============== =====================================================================================

Every image is made square by a centre crop, resized with PIL's antialiased bilinear filter (what
``torchvision.transforms.Resize`` does, so CIFAR-10 at 64x64 is the seed's 32 -> 64 upsampling) and
converted to ``data.channels`` (0 keeps the dataset's own). Sources that fit in
``data.cache_max_mb`` are decoded once into memory (:class:`ArraySource`); larger ones decode per batch.

**Order.** The example order is a pure function of ``(seed, step)``: epoch ``e`` visits
``permutation(seed, e)`` in global batches of ``B``, dropping the remainder. So the position of the
stream *is* the training step: a resumed run asks for step ``s`` and gets exactly the batch an
uninterrupted run would have seen, with no iterator state to save beyond the step. Each process
reads only its ``1 / process_count`` slice of every global batch, so the global batch is the same
for any number of hosts.

**Why not Grain's DataLoader.** Grain's ``MapDataset`` is random-access too and could express the
same thing, but its shuffle and ``[process_index::process_count]`` sharding define the order per host
(a different global batch for a different host count), and its iterator state is one more thing to
checkpoint. Here the order is a few lines of NumPy that are trivially a function of ``(seed, step)``,
and a small thread pool reads batches ahead (PIL decoding and NumPy copies release the GIL); the
benchmark in ``bench/data_pipeline.py`` shows it outruns the training step by a wide margin.

**On device.** :func:`preprocess` maps uint8 to [-1, 1] and flips a Bernoulli(1/2) subset inside
the jitted train step, so the host ships 1 byte per pixel.

Every failure a user can cause (unknown name, data not prepared and no network, empty or corrupt
files, bad sizes) is a :class:`DataError` with one line that says what is wrong and how to fix it,
raised by :func:`check_data_config` / :func:`load_source` before anything is compiled.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import gzip
import importlib.util
import os
import pickle
import re
import socket
import struct
import tarfile
from typing import Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

LOCAL_DATASETS = ("digits", "idx", "image_folder", "cifar_python")
# Datasets of handwriting / house numbers: a mirrored digit or letter is not one (never flip these).
NO_FLIP_DATASETS = frozenset({"digits", "mnist", "emnist", "kmnist", "binarized_mnist", "mnist_corrupted",
                              "svhn_cropped", "omniglot"})
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})


class DataError(ValueError):
    """The data configuration or the files it points at cannot be used (one line: what and how to fix)."""


# ---------------------------------------------------------------------------------------------------
# Sources


class ArraySource(NamedTuple):
    """An in-memory source: ``images`` uint8 ``[N, H, W, C]``, ``labels`` int32 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: tuple = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, indices):
        return self.images[indices], self.labels[indices]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


class LazySource(NamedTuple):
    """A source that decodes on demand: ``read_one(i) -> (uint8 [S, S, C], int label)``."""

    read_one: Callable[[int], tuple[np.ndarray, int]]
    length: int
    num_classes: int
    name: str
    image_shape: tuple
    class_names: tuple = ()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, indices):
        items = [self.read_one(int(i)) for i in np.asarray(indices).reshape(-1)]
        images = np.stack([im for im, _ in items]) if items else np.zeros((0, *self.image_shape), np.uint8)
        return images, np.asarray([lab for _, lab in items], np.int32)


def materialize(source, num_workers: int = 1, chunk: int = 512) -> ArraySource:
    """Decode every example of ``source`` once into an :class:`ArraySource` (chunks read in parallel)."""
    n = len(source)
    images = np.empty((n, *source.image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    starts = range(0, n, chunk)

    def fill(start):
        stop = min(start + chunk, n)
        images[start:stop], labels[start:stop] = source[np.arange(start, stop)]

    with concurrent.futures.ThreadPoolExecutor(max(num_workers, 1)) as pool:
        list(pool.map(fill, starts))
    return ArraySource(images, labels, source.num_classes, source.name, tuple(source.class_names))


# ---------------------------------------------------------------------------------------------------
# Host-side image geometry (uint8 in, uint8 out)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """``[..., H, W, C]`` uint8 -> ``channels`` (0 = unchanged). 1 -> 3 repeats the gray value;
    3/4 -> 1 is ITU-R 601-2 luma ``(299 R + 587 G + 114 B) / 1000`` (PIL's ``convert('L')``);
    an alpha channel is dropped."""
    c = images.shape[-1]
    if c == 2 or c == 4:  # gray+alpha, RGBA: drop alpha
        images, c = images[..., :c - 1], c - 1
    if channels == 0 or channels == c:
        return images
    if channels == 3 and c == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and c == 3:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert {c}-channel images to data.channels={channels} (use 0, 1 or 3)")


def fit_image(image: np.ndarray, size: int, channels: int = 0) -> np.ndarray:
    """One image ``[H, W]`` or ``[H, W, C]`` -> uint8 ``[size, size, C']``: convert channels, centre-crop
    the largest square, resize with PIL's antialiased bilinear filter (a no-op at the same size)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {image.dtype}")
    image = convert_channels(image, channels)
    h, w = image.shape[:2]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[top:top + s, left:left + s]
    if image.shape[0] == size:
        return np.ascontiguousarray(image)
    c = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if c == 1 else image, "L" if c == 1 else "RGB")
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out[..., None] if c == 1 else out


def resize_uint8(images: np.ndarray, size: int, channels: int = 0) -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` images to ``size x size`` (centre crop if not square, bilinear,
    antialiased), converting to ``channels`` (0 = unchanged)."""
    if images.shape[1] == size and images.shape[2] == size:
        return convert_channels(images, channels)
    return np.stack([fit_image(im, size, channels) for im in images])


# ---------------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits(image_size: int = 8, channels: int = 0) -> ArraySource:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes, values 0..16).

    Pixels are mapped to uint8 by ``round(v * 255 / 16)``; ``image_size != 8`` resizes them.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource(resize_uint8(images, image_size, channels), digits.target.astype(np.int32), 10,
                       "digits", tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------------------------------------------
# idx files

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
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"idx file {path} is corrupt ({e}); download or reinstall it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path} is not an idx file (its first 4 bytes are {raw[:4].hex() or 'missing'}, "
                        "expected 0000 then a type byte 08..0e and a dimension count)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
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


# ---------------------------------------------------------------------------------------------------
# A folder of images


def scan_image_folder(directory: str, split: str = "train") -> tuple[list[str], np.ndarray, tuple]:
    """``(paths, labels, class_names)`` of the images under ``directory``.

    ``directory/<split>/`` is used when it exists (otherwise only split "train" is available, as the
    whole folder). Images directly in the folder are unlabelled (``class_names == ()``); otherwise each
    sub-folder that holds images (at any depth) is one class, in sorted order.
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


def load_image_folder(directory: str, split: str = "train", image_size: int = 64,
                      channels: int = 0) -> LazySource:
    """A :class:`LazySource` over a folder of images (see :func:`scan_image_folder`).

    Every file's header is opened once here, so a file that is not an image fails now, with its name;
    ``channels=0`` picks 1 when every image is grayscale, else 3.
    """
    from PIL import Image, UnidentifiedImageError

    paths, labels, class_names = scan_image_folder(directory, split)
    gray = True
    for p in paths:
        try:
            with Image.open(p) as im:
                gray = gray and im.mode in _GRAY_MODES
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p} is not a readable image ({e}); remove or replace it") from None
    c = channels or (1 if gray else 3)

    def read_one(i):
        try:
            with Image.open(paths[i]) as im:
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{paths[i]} cannot be decoded ({e}); remove or replace it") from None
        return fit_image(arr, image_size), int(labels[i])

    return LazySource(read_one, len(paths), len(class_names), f"image_folder:{directory}",
                      (image_size, image_size, c), class_names)


# ---------------------------------------------------------------------------------------------------
# CIFAR "python version" batches


def load_cifar_python(directory: str, split: str = "train", image_size: int = 32,
                      channels: int = 0) -> ArraySource:
    """CIFAR-10 or CIFAR-100 in the "python version" of https://www.cs.toronto.edu/~kriz/cifar.html.

    ``directory`` holds ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``;
    what ``torchvision.datasets.CIFAR10(root)`` downloads), ``cifar-100-python/`` (``train``, ``test``,
    ``meta``; fine labels), those files themselves, or the ``.tar.gz`` they come in. The batches are
    Python pickles: only load files you downloaded from that page.
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
            data = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
            labels = np.concatenate([np.asarray(b[label_key], np.int32) for b in batches])
            names = tuple(n.decode() for n in read(meta)[names_key])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"CIFAR files in {directory} are not the python version ({e!r})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
            raise DataError(f"CIFAR files in {directory} hold data of shape {data.shape}, expected [N, 3072]")
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return ArraySource(resize_uint8(images, image_size, channels), labels, len(names),
                           f"cifar_python:{directory}", names)
    raise DataError(f"no CIFAR python batches in {directory}: expected cifar-10-batches-py/ (or "
                    "cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html")


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataError(f"CIFAR batch {path} is corrupt ({e}); download it again") from None


def _tar_reader(tar_path, folder):
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = {os.path.basename(m.name): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"{tar_path} is corrupt ({e}); download it again") from None

    def read(name):
        if name not in members:
            raise DataError(f"{tar_path} has no {folder}/{name}")
        try:
            return pickle.loads(members[name], encoding="bytes")
        except (EOFError, pickle.UnpicklingError, ValueError) as e:
            raise DataError(f"{tar_path}: {name} is corrupt ({e}); download it again") from None

    return read


# ---------------------------------------------------------------------------------------------------
# TFDS by name


def _tfds_builder(name: str, data_dir: str, file_format: str | None = None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir or None, **({"file_format": file_format} if file_format else {}))
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, list(LOCAL_DATASETS) + tfds.list_builders(
            with_community_datasets=False), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise DataError(f"data.dataset={name!r} is neither a local source ({', '.join(LOCAL_DATASETS)}) nor a "
                        f"TFDS dataset; {hint}see https://www.tensorflow.org/datasets/catalog") from None


def _offline_hints(name: str) -> str:
    """How else to get ``name`` onto a machine without internet (one sentence, for error messages)."""
    base = name.split(":")[0].split("/")[0]
    if base == "fashion_mnist":
        return ("or read the idx files: `apt-get install dataset-fashion-mnist` and use "
                "--config=configs/fashion_mnist.py "
                f"(--config.data.dataset=idx --config.data.data_dir={DEBIAN_FASHION_MNIST})")
    if base in ("mnist", "kmnist", "emnist"):
        return ("or read the idx files: copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*.gz "
                "into a folder and set --config.data.dataset=idx --config.data.data_dir=FOLDER")
    if base in ("cifar10", "cifar100"):
        return ("or read the python batches: copy cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html, "
                "or torchvision's ./data/cifar-10-batches-py) into a folder and set "
                "--config.data.dataset=cifar_python --config.data.data_dir=FOLDER")
    return "or put the images in a folder and set --config.data.dataset=image_folder --config.data.data_dir=FOLDER"


def _network_available(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Whether ``host:443`` answers within ``timeout`` s (assumed yes behind an HTTP(S) proxy)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def prepare_tfds(name: str, data_dir: str = "") -> str:
    """Download and prepare TFDS dataset ``name`` as ArrayRecord in ``data_dir``; returns its path.

    Needs internet and TensorFlow (TFDS encodes images with it while preparing; reading does not).
    """
    builder = _tfds_builder(name, data_dir, file_format="array_record")
    where = os.path.dirname(os.path.dirname(str(builder.data_path)))
    howto = (f"run `python -m jaxdiff.data prepare {name} --data_dir DIR` on a machine with internet and "
             f"TensorFlow, copy DIR here and set --config.data.data_dir=DIR; {_offline_hints(name)}")
    if not _has_tensorflow():
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and preparing it needs TensorFlow "
                        f"(`pip install tensorflow-cpu`); or {howto}")
    if not _network_available():
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and this machine has no internet to "
                        f"download it; {howto}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # TF must not grab the accelerator JAX trains on
    builder.download_and_prepare(file_format="array_record")
    return str(builder.data_path)


def load_tfds(data_config, split: str = "train") -> LazySource:
    """TFDS dataset ``data.dataset`` read with ``tfds.data_source`` (ArrayRecord, random access).

    A dataset that is not prepared in ``data.data_dir`` is downloaded when ``data.download`` (see
    :func:`prepare_tfds`), otherwise a :class:`DataError` says how to get it offline.
    """
    import tensorflow_datasets as tfds

    name, data_dir, size = data_config.dataset, data_config.data_dir, data_config.image_size
    builder = _check_tfds_features(data_config)

    def open_source():
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)

    try:
        ds = open_source()
    except Exception as e:  # TFDS raises many types here; diagnose from the builder's state
        version_dir = str(builder.data_path)
        if not builder.is_prepared():
            if not data_config.download:
                raise DataError(
                    f"TFDS dataset {name!r} is not prepared in {os.path.dirname(os.path.dirname(version_dir))}; set "
                    f"--config.data.download=True (needs internet and TensorFlow), or run `python -m jaxdiff.data "
                    f"prepare {name} --data_dir DIR` on a machine that has them and copy DIR here; "
                    f"{_offline_hints(name)}") from None
            prepare_tfds(name, data_dir)
            ds = open_source()
        elif isinstance(e, NotImplementedError):
            raise DataError(f"TFDS dataset {name!r} in {version_dir} is stored as TFRecord, which has no random "
                            f"access; convert it: `tfds convert_format --dataset_version_dir={version_dir} "
                            "--out_file_format=array_record` (or prepare it again with file_format=array_record)"
                            ) from None
        else:
            splits = ", ".join(builder.info.splits) or "unknown"
            raise DataError(f"TFDS dataset {name!r} cannot read split {split!r} (available: {splits}): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    features = ds.dataset_info.features
    image_feature = features[data_config.image_key]
    label_feature = features[data_config.label_key] if data_config.label_key in features else None
    num_classes = int(getattr(label_feature, "num_classes", 0) or 0)
    class_names = tuple(getattr(label_feature, "names", ()) or ()) if num_classes else ()
    own_channels = image_feature.shape[-1] if image_feature.shape and image_feature.shape[-1] else 3
    c = data_config.channels or own_channels
    if len(ds) == 0:
        raise DataError(f"TFDS dataset {name!r} split {split!r} is empty")

    def read_one(i):
        ex = ds[i]
        label = int(ex[data_config.label_key]) if num_classes else 0
        return fit_image(ex[data_config.image_key], size, c), label

    return LazySource(read_one, len(ds), num_classes, name, (size, size, c), class_names)


def write_tfds_dataset(name: str, data_dir: str, splits: dict, num_classes: int) -> str:
    """Write ``splits = {split: (uint8 images [N, H, W, C], int labels [N])}`` as a real TFDS dataset
    (ArrayRecord, PNG-encoded ``image`` + ClassLabel ``label``) that ``tfds.data_source(name,
    data_dir=data_dir)`` reads by name. For tests and benchmarks of the TFDS path on machines without
    TensorFlow: TFDS encodes images with TF, so PIL's PNG encoder stands in while this runs."""
    import io

    import tensorflow_datasets as tfds
    from PIL import Image
    from tensorflow_datasets.core.features import image_feature

    shape = next(iter(splits.values()))[0].shape[1:]

    def encode_png(self, image):
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
        return buf.getvalue()

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=shape), "label": tfds.features.ClassLabel(num_classes=num_classes)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(*arrays) for split, arrays in splits.items()}

        def _generate_examples(self, images, labels):
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": image, "label": int(label)}

    Builder.name = name
    original = image_feature._ImageEncoder._encode_image
    image_feature._ImageEncoder._encode_image = encode_png
    try:
        builder = Builder(data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare()
    finally:
        image_feature._ImageEncoder._encode_image = original
    return str(builder.data_path)


def _check_tfds_features(data_config):
    """The TFDS builder for ``data.dataset``, after checking it has an image feature ``data.image_key``."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(data_config.dataset, data_config.data_dir)
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    feature = features[data_config.image_key] if data_config.image_key in keys else None
    if not isinstance(feature, tfds.features.Image):
        images = [k for k in keys if isinstance(features[k], tfds.features.Image)]
        fix = (f"set --config.data.image_key={images[0]}" if images else
               "it is not an image dataset")
        raise DataError(f"TFDS dataset {data_config.dataset!r} has no image feature {data_config.image_key!r} "
                        f"(features: {', '.join(keys)}); {fix}")
    return builder


# ---------------------------------------------------------------------------------------------------
# Config checks and the entry point


def check_data_config(data_config) -> None:
    """Raise :class:`DataError` for the first unusable ``config.data`` value, without reading data.

    Checks sizes and switches, that the dataset name is a local source or a registered TFDS image
    dataset, that local sources have an existing ``data_dir``, and that digits are never flipped.
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
        _check_tfds_features(d)


def _estimated_mb(source) -> float:
    return len(source) * int(np.prod(source.image_shape)) / 2**20


def load_source(data_config, split: str = "train"):
    """The source named by ``data_config.dataset`` for ``split``, at ``data_config.image_size``.

    Raises :class:`DataError` (one line: what is wrong, how to fix it) before anything is compiled.
    Lazy sources whose decoded images fit in ``data.cache_max_mb`` are decoded into memory now.
    """
    check_data_config(data_config)
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
        source = load_tfds(d, split)
    if isinstance(source, LazySource) and _estimated_mb(source) <= d.cache_max_mb:
        source = materialize(source, d.num_workers)
    return source


# ---------------------------------------------------------------------------------------------------
# Order and the stream


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: ``permutation(num_examples)`` drawn from PCG64 seeded
    with ``[seed, epoch]`` (NumPy's SeedSequence), identical on every host and platform."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """Indices of the global batch at ``step``: slice ``step mod E`` of ``permutation(seed, step // E)``,
    where ``E = num_examples // batch_size`` batches make an epoch."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise DataError(f"training.batch_size={batch_size} is larger than the dataset ({num_examples} examples)")
    epoch, i = divmod(step, per_epoch)
    return epoch_permutation(seed, epoch, num_examples)[i * batch_size:(i + 1) * batch_size]


def local_batch_indices(seed: int, step: int, batch_size: int, num_examples: int, process_index: int = 0,
                        process_count: int = 1) -> np.ndarray:
    """This process's contiguous ``batch_size / process_count`` slice of the global batch at ``step``.

    The global batch is sorted first (sequential reads) and then sliced, so the global row order is
    the same for every process count: row ``i`` meets the same noise (drawn per global row in the
    train step) whether one process or many feed it, and multi-host training equals single-host."""
    if batch_size % process_count:
        raise DataError(f"training.batch_size={batch_size} does not divide over {process_count} processes")
    local = batch_size // process_count
    return np.sort(batch_indices(seed, step, batch_size, num_examples))[
        process_index * local:(process_index + 1) * local]


def batch_stream(source, seed: int, start_step: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, prefetch: int = 2, num_workers: int = 1) -> Iterator[dict]:
    """Yield ``{"image": uint8 [B/P, H, W, C], "label": int32 [B/P]}`` for steps ``start_step, ...``:
    this process's slice of each global batch (:func:`local_batch_indices`).

    ``num_workers`` threads read up to ``prefetch`` batches ahead; batches come out in step order and
    are the same whatever the thread timing. Closing the generator stops the readers.
    """
    if batch_size % process_count:
        raise DataError(f"training.batch_size={batch_size} does not divide over {process_count} processes")
    n = len(source)
    batch_indices(seed, 0, batch_size, n)  # raises now if the batch is larger than the dataset
    per_epoch = n // batch_size
    local = batch_size // process_count
    perms: dict[int, np.ndarray] = {}  # the current epoch's permutation (one draw per epoch, not per step)

    def indices(step):
        epoch, i = divmod(step, per_epoch)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = epoch_permutation(seed, epoch, n)
        rows = perms[epoch][i * batch_size:(i + 1) * batch_size]
        return np.sort(rows)[process_index * local:(process_index + 1) * local]  # see local_batch_indices

    def read(idx):
        images, labels = source[idx]
        return {"image": images, "label": labels}

    pool = concurrent.futures.ThreadPoolExecutor(max(num_workers, 1), thread_name_prefix="jaxdiff-data")
    pending: list = []
    step = start_step
    try:
        while True:
            while len(pending) < max(prefetch, 1):
                pending.append(pool.submit(read, indices(step)))  # indices on this thread: perms unshared
                step += 1
            yield pending.pop(0).result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------
# On device


def preprocess(images, key, random_flip: bool):
    """uint8 ``[B, H, W, C]`` -> float32 ``x = images / 127.5 - 1`` in [-1, 1]; with ``random_flip``,
    ``x_i <- x_i[:, ::-1]`` (mirror left-right) for ``f_i ~ Bernoulli(1/2)`` drawn independently per
    example from ``key``. Pure and jittable; call it inside the train step. (XLA turns the division
    into a multiplication by a rounded reciprocal, so 255 would land one ulp above 1 without the clip.)"""
    x = jnp.clip(jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0, -1.0, 1.0)
    if random_flip:
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    return x


# ---------------------------------------------------------------------------------------------------
# Command line: python -m jaxdiff.data prepare NAME --data_dir DIR | info --dataset ... --data_dir ...


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    import ml_collections

    from configs import default

    parser = argparse.ArgumentParser(prog="python -m jaxdiff.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download + prepare a TFDS dataset as ArrayRecord (needs internet and TF)")
    prep.add_argument("name")
    prep.add_argument("--data_dir", default="")
    info = sub.add_parser("info", help="load a source as training would and print what it holds")
    info.add_argument("--dataset", default="digits")
    info.add_argument("--data_dir", default="")
    info.add_argument("--image_size", type=int, default=0, help="0 = the dataset's own (28 / 32 / ...)")
    info.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            print(prepare_tfds(args.name, args.data_dir))
            return 0
        d = ml_collections.ConfigDict(default.get_config().data.to_dict())
        d.dataset, d.data_dir, d.download = args.dataset, args.data_dir, False
        d.image_size = args.image_size or {"digits": 8, "idx": 28, "cifar_python": 32}.get(args.dataset, 64)
        src = load_source(d, args.split)
        counts = np.bincount(np.asarray(src[np.arange(len(src))][1]), minlength=max(src.num_classes, 1))
        print(f"{src.name} [{args.split}]: {len(src)} images of shape {src.image_shape}, "
              f"{src.num_classes} classes, per class {counts.tolist()}")
        return 0
    except DataError as e:
        print(f"error: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(_main())
