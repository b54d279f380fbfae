"""Linear measurement operators ``y = A x (+ noise)`` on images ``[B, H, W, C]``, for restoration
with a trained diffusion model (:mod:`jaxdiff.core.restoration`) and for inpainting.

A :class:`LinearOperator` is a NamedTuple of pure functions: ``forward(x) = A x``, ``transpose(y) =
A^T y`` and ``pinv(y) = A^+ y`` (the Moore-Penrose pseudo-inverse), all batched, plus the shape of a
measurement. Every operator here has an exact pseudo-inverse in closed form:

  inpainting(known)        ``A x = m * x`` (``m`` 1 on known pixels): ``A^T = A^+ = A`` (a projection).
  super_resolution(f)      ``A`` = mean over ``f x f`` blocks (``[B, H/f, W/f, C]``); ``A A^T = I / f^2``,
                           so ``A^T y = repeat(y) / f^2`` and ``A^+ y = repeat(y)`` (nearest upsampling).
  colorization()           ``A x`` = the mean of the channels (``[B, H, W, 1]``); ``A^T y = repeat_C(y) / C``,
                           ``A^+ y = repeat_C(y)``.
  blur(kernel)             circular convolution, diagonal in the 2-D DFT: ``A = F^-1 diag(k^) F``,
                           ``A^T = F^-1 diag(conj k^) F``, ``A^+ = F^-1 diag(k^+) F`` with
                           ``k^+ = conj(k^) / |k^|^2`` where ``|k^| > tol * max |k^|`` and 0 elsewhere
                           (the frequencies the blur removes are the null space).
  identity()               ``A = I`` (denoising).

``A^+ A`` is the orthogonal projection onto the row space; ``I - A^+ A`` onto the null space (what
the measurement does not see and the prior must fill in).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

OPERATORS = ("super_resolution", "deblur_gaussian", "deblur_box", "colorization", "denoise", "inpainting")


class LinearOperator(NamedTuple):
    """``forward``, ``transpose`` and ``pinv`` of ``A`` on batches; ``measurement_shape(image_shape)``
    the shape ``[h, w, c]`` of ``A x`` for one image of ``image_shape``; ``name`` describes it."""

    forward: Callable
    transpose: Callable
    pinv: Callable
    measurement_shape: Callable
    name: str

    def project_null(self, x):
        """``(I - A^+ A) x``: the part of ``x`` the measurement does not see."""
        return x - self.pinv(self.forward(x))


def _check_image_shape(image_shape, what: str):
    if len(tuple(image_shape)) != 3:
        raise ValueError(f"{what} works on images [H, W, C], got shape {tuple(image_shape)}")


def inpainting(known) -> LinearOperator:
    """``A x = known * x`` for a mask ``known`` ``[H, W, 1 or C]`` (1 = a pixel that is kept, 0 = one to
    fill). ``A`` is its own transpose and pseudo-inverse."""
    known = np.asarray(known, np.float32)
    if known.ndim != 3 or not np.all((known == 0) | (known == 1)):
        raise ValueError(f"an inpainting mask must be [H, W, 1 or C] of zeros and ones, got shape {known.shape}")
    m = jnp.asarray(known)

    def forward(x):
        return m * x

    def measurement_shape(image_shape):
        _check_image_shape(image_shape, "inpainting")
        if known.shape[:2] != tuple(image_shape)[:2] or known.shape[2] not in (1, image_shape[2]):
            raise ValueError(f"the mask has shape {known.shape}, but the images are {tuple(image_shape)}")
        return tuple(image_shape)

    return LinearOperator(forward, forward, forward, measurement_shape, f"inpainting ({int(known.sum())} known)")


def super_resolution(factor: int) -> LinearOperator:
    """``A`` = average pooling over ``factor x factor`` blocks (the low-resolution image)."""
    f = int(factor)
    if f < 2 or f != factor:
        raise ValueError(f"the super-resolution factor must be an integer >= 2, got {factor!r}")

    def forward(x):
        b, h, w, c = x.shape
        return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))

    def pinv(y):
        return jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)

    def measurement_shape(image_shape):
        _check_image_shape(image_shape, "super-resolution")
        h, w, c = image_shape
        if h % f or w % f:
            raise ValueError(f"super-resolution by {f} needs a height and width divisible by {f}, got {h}x{w}")
        return (h // f, w // f, c)

    return LinearOperator(forward, lambda y: pinv(y) / (f * f), pinv, measurement_shape, f"super-resolution x{f}")


def colorization(channels: int = 3) -> LinearOperator:
    """``A x`` = the mean of the ``channels`` colour channels (a grey image ``[B, H, W, 1]``)."""
    c = int(channels)

    def forward(x):
        return x.mean(axis=-1, keepdims=True)

    def pinv(y):
        return jnp.repeat(y, c, axis=-1)

    def measurement_shape(image_shape):
        _check_image_shape(image_shape, "colorization")
        if image_shape[2] < 2:
            raise ValueError(f"colorization needs colour images, but the model's images have {image_shape[2]} "
                             "channel")
        if image_shape[2] != c:
            raise ValueError(f"this colorization operator makes {c} channels, but the images have {image_shape[2]}")
        return tuple(image_shape[:2]) + (1,)

    return LinearOperator(forward, lambda y: pinv(y) / c, pinv, measurement_shape, "colorization")


def identity() -> LinearOperator:
    """``A = I``: denoising (with measurement noise)."""

    def measurement_shape(image_shape):
        _check_image_shape(image_shape, "denoising")
        return tuple(image_shape)

    same = lambda x: x  # noqa: E731
    return LinearOperator(same, same, same, measurement_shape, "denoising")


def gaussian_kernel(sigma: float, size: int = 0) -> np.ndarray:
    """A normalised 2-D Gaussian ``exp(-(i^2 + j^2) / (2 sigma^2))`` of odd ``size`` (0: ``2 ceil(3 sigma) + 1``)."""
    if not sigma > 0:
        raise ValueError(f"the Gaussian blur's sigma must be positive, got {sigma!r}")
    size = int(size) or 2 * int(np.ceil(3 * sigma)) + 1
    r = np.arange(size) - size // 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma ** 2))
    return k / k.sum()


def box_kernel(size: int) -> np.ndarray:
    """A normalised ``size x size`` box (mean) filter."""
    if int(size) != size or size < 2:
        raise ValueError(f"the box blur's size must be an integer >= 2, got {size!r}")
    return np.full((int(size), int(size)), 1.0 / size ** 2)


def blur(kernel, tol: float = 1e-3) -> LinearOperator:
    """Circular convolution with ``kernel`` ``[k, k]`` (centred; wrapped around images smaller than
    it), per channel, through the 2-D DFT;
    ``A^+`` inverts the frequencies with ``|k^| > tol * max |k^|`` and drops the others."""
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"a blur kernel must be 2-D, got shape {kernel.shape}")
    spectra = {}

    def spectrum(h, w):
        if (h, w) not in spectra:
            kh, kw = kernel.shape
            rows, cols = np.meshgrid((np.arange(kh) - kh // 2) % h, (np.arange(kw) - kw // 2) % w, indexing="ij")
            centred = np.zeros((h, w))
            np.add.at(centred, (rows, cols), kernel)  # a kernel wider than the image wraps around it
            k_hat = np.fft.fft2(centred)
            keep = np.abs(k_hat) > tol * np.abs(k_hat).max()
            k_pinv = np.where(keep, np.conj(k_hat) / np.where(keep, np.abs(k_hat) ** 2, 1.0), 0.0)
            spectra[(h, w)] = tuple(jnp.asarray(v[None, :, :, None], jnp.complex64)
                                    for v in (k_hat, np.conj(k_hat), k_pinv))
        return spectra[(h, w)]

    def apply(which):
        def fn(x):
            mult = spectrum(x.shape[1], x.shape[2])[which]
            out = jnp.fft.ifft2(jnp.fft.fft2(x.astype(jnp.complex64), axes=(1, 2)) * mult, axes=(1, 2))
            return jnp.real(out).astype(x.dtype)
        return fn

    def measurement_shape(image_shape):
        _check_image_shape(image_shape, "deblurring")
        spectrum(image_shape[0], image_shape[1])
        return tuple(image_shape)

    name = f"blur ({kernel.shape[0]}x{kernel.shape[1]})"
    return LinearOperator(apply(0), apply(1), apply(2), measurement_shape, name)


def operator_from_name(name: str, scale: float = 0.0, channels: int = 3) -> LinearOperator:
    """An operator of :data:`OPERATORS` but ``inpainting`` (which needs a mask): ``super_resolution``
    (``scale`` = factor, default 4), ``deblur_gaussian`` (``scale`` = sigma in pixels, default 1.5),
    ``deblur_box`` (``scale`` = size, default 3), ``colorization`` (of ``channels``), ``denoise``."""
    if name == "super_resolution":
        return super_resolution(int(scale or 4) if float(scale or 4).is_integer() else scale)
    if name == "deblur_gaussian":
        return blur(gaussian_kernel(float(scale or 1.5)))
    if name == "deblur_box":
        return blur(box_kernel(int(scale or 3) if float(scale or 3).is_integer() else scale))
    if name == "colorization":
        return colorization(channels)
    if name == "denoise":
        return identity()
    raise ValueError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS[:-1])}")
