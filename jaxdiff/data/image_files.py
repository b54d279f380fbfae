"""A folder of image files as a source (``data.dataset=image_folder``), and the checked reading of
one image file (PIL) that edit mode's inputs and masks use too.

Every failure a user can cause (missing folder, a file that is not an image, a decompression bomb,
a link out of the folder) is a :class:`~jaxdiff.data.sources.DataError` whose one line names the
file and says how to fix it.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

from jaxdiff.common.errors import one_line
from jaxdiff.data.sources import DataError, LazySource, fit_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})


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
