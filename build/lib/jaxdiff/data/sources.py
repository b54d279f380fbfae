"""Image sources: random-access collections of uint8 images with labels, and the host-side image
geometry every reader shares.

A *source* has ``len(source)``, ``source[indices] -> (images uint8 [n, S, S, C], labels int32 [n])``,
``num_classes`` (0 = unlabelled), ``image_shape``, ``name`` and ``class_names``. Every image is made
square by a centre crop, resized with PIL's antialiased bilinear filter (what
``torchvision.transforms.Resize`` does, so CIFAR-10 at 64x64 is the seed's 32 -> 64 upsampling) and
converted to the asked number of channels (0 keeps the dataset's own).
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, NamedTuple

import numpy as np


class DataError(ValueError):
    """The data configuration or the files it points at cannot be used (one line: what and how to fix)."""


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
