"""Edit mode's inputs, read and checked against the model before anything is compiled: the images
(the dataset's test split, a folder of images, or an ``.npz`` / ``.npy`` array), the inpainting mask
(``edit.mask``) and the class label of every input (``edit.labels``). Every problem is a one-line
:class:`~jaxdiff.drivers.config_checks.ConfigError` naming its field.
"""

from __future__ import annotations

import numpy as np

from jaxdiff.common import array_files, paths
from jaxdiff.data import DataError, image_mode, read_image
from jaxdiff.drivers.config_checks import ConfigError
from jaxdiff.drivers.eval_features import load_splits
from jaxdiff.drivers.sampling_config import parse_labels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def known_mask(spec: str, image_shape, seed: int = 0) -> np.ndarray:
    """``[H, W, 1]`` float32, 1 where the input is kept and 0 in the region ``spec`` names to fill:
    ``center`` (the middle half in each direction), ``left`` / ``right`` / ``top`` / ``bottom``
    halves, ``random`` (half the pixels, ``default_rng(seed)``), ``box:y0,x0,h,w``, or a PNG / .npy
    file of the image size (white / nonzero = fill)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    fill = np.zeros((h, w), bool)
    text = str(spec).strip()
    if text == "center":
        fill[h // 4:h - h // 4, w // 4:w - w // 4] = True
    elif text in ("left", "right", "top", "bottom"):
        half = {"left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
                "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None))}[text]
        fill[half] = True
    elif text == "random":
        fill = np.random.default_rng(seed).random((h, w)) < 0.5
    elif text.startswith("box:"):
        try:
            y0, x0, bh, bw = (int(v) for v in text[4:].split(","))
        except ValueError:
            raise ConfigError(f"edit.mask={spec!r}: a box is box:y0,x0,h,w in pixels") from None
        if not (0 <= y0 < h and 0 <= x0 < w and bh > 0 and bw > 0):
            raise ConfigError(f"edit.mask={spec!r} is outside the {h}x{w} images")
        fill[y0:y0 + bh, x0:x0 + bw] = True
    else:  # a file (config_checks.validate_edit checked that it exists)
        path = paths.as_path(text)
        array = _read_array(path, "edit.mask") if text.endswith(".npy") else _read_image(path, 1)[..., 0]
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.shape != (h, w):
            raise ConfigError(f"edit.mask {text} is {'x'.join(map(str, array.shape))}, but the model's images are "
                              f"{h}x{w}")
        fill = array > (127 if array.dtype == np.uint8 else 0)
    if not fill.any() or fill.all():
        raise ConfigError(f"edit.mask={spec!r} fills {'nothing' if not fill.any() else 'every pixel'}")
    return (~fill).astype(np.float32)[..., None]


def _read_image(path, channels: int) -> np.ndarray:
    try:
        image_mode(str(path))  # a decompression bomb refused from the header, without PIL's warning
        return read_image(str(path), channels)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _read_array(path, field: str) -> np.ndarray:
    """The array of an ``.npy`` file, or the ``images`` array of an ``.npz`` (read without trusting the
    file: :mod:`jaxdiff.common.array_files`); :class:`ConfigError` naming ``field`` otherwise."""
    try:
        data = path.read_bytes()
        if path.suffix != ".npz":
            return array_files.npy_from_bytes(data, str(path))
        arrays = array_files.npz_from_bytes(data, str(path))
    except (OSError, array_files.ArrayFileError) as e:
        raise ConfigError(f"{field} {path} cannot be read ({e})") from None
    if "images" not in arrays:
        raise ConfigError(f"{field} {path} has no array 'images' (it has {', '.join(sorted(arrays)) or 'none'})")
    return arrays["images"]


def read_input(edit_config, data_config, image_shape) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``edit.num_images`` input images as uint8 ``[N, H, W, C]`` and their labels (``None``
    unless they come from the dataset). ``ConfigError`` (one line) for a missing input, too few
    images, or images of another size or channel count than the model's ``image_shape``."""
    ec, (h, w, c) = edit_config, tuple(image_shape)
    n, spec, labels = int(ec.num_images), str(ec.input), None
    if spec == "dataset":
        _, test, _ = load_splits(data_config)
        if len(test) < n:
            raise ConfigError(f"edit.num_images={n}, but the test split has {len(test)} images")
        images, labels = test[np.arange(n)]
        labels = np.asarray(labels, np.int32)
    else:
        path = paths.as_path(spec)
        if not path.exists():
            raise ConfigError(f"edit.input={spec!r} is not 'dataset' or an existing folder, .npz or .npy file")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ConfigError(f"edit.input {spec} holds no {'/'.join(IMAGE_SUFFIXES)} images")
            files = files[:n]
            images = [_read_image(p, c) for p in files]
            for p, im in zip(files, images):
                if im.shape[:2] != (h, w):
                    raise ConfigError(f"{p} is {im.shape[0]}x{im.shape[1]}, but the model's images are {h}x{w}")
            images = np.stack(images)
        else:
            images = _read_array(path, "edit.input")
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4 or images.dtype != np.uint8:
                raise ConfigError(f"edit.input {spec} holds {images.dtype} {images.shape}; images are uint8 "
                                  "[N, H, W, C]")
            if images.shape[1:] != (h, w, c):
                raise ConfigError(f"edit.input {spec} holds images of {images.shape[1:]}, but the model's are "
                                  f"{(h, w, c)}")
        if len(images) < n:
            raise ConfigError(f"edit.num_images={n}, but edit.input {spec} holds {len(images)} images")
        images = images[:n]
    return np.asarray(images, np.uint8), labels


def edit_labels(edit_config, sampling_config, input_labels, num: int, num_classes: int) -> np.ndarray | None:
    """The class of every input (``None``: unconditional): ``auto`` takes the dataset's labels for a
    class-conditional model (else ``sampling.labels``), ``none``, or comma-separated ids cycled."""
    spec = str(edit_config.labels).strip().lower()
    if spec == "auto":
        if num_classes and input_labels is not None:
            return parse_labels(",".join(str(int(v)) for v in input_labels), num, num_classes)
        spec = str(sampling_config.labels)
    return parse_labels(spec, num, num_classes)
