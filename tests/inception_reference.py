"""What the pytorch-fid parity fixture is made of, shared by the script that records it with PyTorch
(``tests/fixtures/make_inception_fixture.py``) and the tests that check jaxdiff against it without
PyTorch: random FID-Inception weights and test images drawn by NumPy from a seed, and the compact
summary of each block's output that the fixture stores. No torch import here.

Random weights: He-scaled convolutions (``N(0, 2 / fan_in)``) and BatchNorm statistics of order 1
(``weight`` U(0.5, 1.5), ``bias`` and ``running_mean`` N(0, 0.2^2), ``running_var`` U(0.5, 1.5)),
so that activations stay O(1) through all 94 layers and every block's output still depends on the
image (with ``fake_inception_npz``'s 0.1-scaled BatchNorm weights the deep blocks would be nearly
constant, and a comparison of them would check little).
"""

from __future__ import annotations

import hashlib

import numpy as np

from jaxdiff.evaluation import inception

WEIGHT_SEED = 20151205
IMAGE_SEED = 7
# (count, height, width): two CIFAR-sized images, one odd non-square upsampled one, one downsampled
IMAGE_GROUPS = ((2, 32, 32), (1, 45, 37), (1, 333, 310))
SAMPLES_PER_BLOCK = 32  # (h, w, c) positions recorded per block besides the channel means
BLOCKS = ("input",) + inception.BLOCKS  # "input": the resized, normalised 299x299 image
FIXTURE = "tests/fixtures/inception_pytorch_fid.npz"


def random_state_dict(seed: int = WEIGHT_SEED) -> dict:
    """A pytorch-fid FID-Inception state dict (PyTorch names and layouts, as ``torch.save`` would
    hold it) with every weight and buffer drawn from ``default_rng(seed)`` in sorted-key order:
    the 470 arrays jaxdiff loads, each BatchNorm's ``num_batches_tracked`` and the unused ``fc``."""
    shapes = {key: torch_shape for key, (_, _, _, torch_shape) in inception.torch_key_map().items()}
    for key in list(shapes):
        if key.endswith(".bn.running_var"):
            shapes[key[:-len("running_var")] + "num_batches_tracked"] = ()
    shapes["fc.weight"], shapes["fc.bias"] = (1008, inception.FEATURE_DIM), (1008,)
    rng = np.random.default_rng(seed)
    return {key: _draw(rng, key, shapes[key]) for key in sorted(shapes)}


def _draw(rng, key: str, shape: tuple) -> np.ndarray:
    """One array of :func:`random_state_dict`, scaled by what it is."""
    if key.endswith("num_batches_tracked"):
        return np.asarray(rng.integers(0, 10_000), np.int64)
    if key.endswith("conv.weight"):
        return (rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
    if key.endswith(("bn.weight", "running_var")):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if key == "fc.weight":
        return (rng.normal(size=shape) / np.sqrt(shape[1])).astype(np.float32)
    return (0.2 * rng.normal(size=shape)).astype(np.float32)


def reference_images(seed: int = IMAGE_SEED) -> list:
    """uint8 ``[n, h, w, 3]`` image groups of :data:`IMAGE_GROUPS`, drawn from ``default_rng(seed)``:
    smooth random fields plus noise, so that resizing and pooling see structure at several scales."""
    rng = np.random.default_rng(seed)
    groups = []
    for n, h, w in IMAGE_GROUPS:
        coarse = rng.uniform(0, 255, (n, 4, 4, 3))
        rows, cols = np.linspace(0, 3, h), np.linspace(0, 3, w)
        r0, c0 = np.minimum(rows.astype(int), 2), np.minimum(cols.astype(int), 2)
        fr, fc = (rows - r0)[None, :, None, None], (cols - c0)[None, None, :, None]
        top = coarse[:, r0][:, :, c0] * (1 - fc) + coarse[:, r0][:, :, c0 + 1] * fc
        bottom = coarse[:, r0 + 1][:, :, c0] * (1 - fc) + coarse[:, r0 + 1][:, :, c0 + 1] * fc
        smooth = top * (1 - fr) + bottom * fr
        groups.append(np.clip(smooth + rng.normal(0, 40, (n, h, w, 3)), 0, 255).round().astype(np.uint8))
    return groups


def sample_positions(block: str, shape: tuple) -> tuple:
    """The fixed ``(h, w, c)`` index arrays recorded for ``block`` of per-image shape ``(H, W, C)``
    (drawn from a seed made of the block's index, so both sides pick the same ones)."""
    rng = np.random.default_rng(1000 + BLOCKS.index(block))
    return tuple(rng.integers(0, n, SAMPLES_PER_BLOCK) for n in shape)


def summarise(outputs: dict) -> dict:
    """``{name: NHWC float array [B, H, W, C]}`` (every block of :data:`BLOCKS`) -> the arrays the
    fixture stores: ``<block>/mean`` (per-channel spatial mean, ``[B, C]``), ``<block>/samples``
    (the values at :func:`sample_positions`, ``[B, SAMPLES_PER_BLOCK]``) and ``<block>/rms`` (the
    root-mean-square of the whole output, the scale errors are measured against)."""
    out = {}
    for block in BLOCKS:
        x = np.asarray(outputs[block], np.float64)
        h, w, c = sample_positions(block, x.shape[1:])
        out[f"{block}/mean"] = x.mean(axis=(1, 2))
        out[f"{block}/samples"] = x[:, h, w, c]
        out[f"{block}/rms"] = np.sqrt(np.mean(x ** 2))
    return out


def relative_errors(ours: dict, reference: dict) -> dict:
    """``{block: max |ours - reference| / rms(reference block)}`` over each block's recorded means
    and samples (two summaries made by :func:`summarise`)."""
    errors = {}
    for block in BLOCKS:
        scale = float(reference[f"{block}/rms"])
        diff = max(np.abs(ours[f"{block}/{part}"] - reference[f"{block}/{part}"]).max()
                   for part in ("mean", "samples"))
        errors[block] = float(diff) / scale
    return errors


def digest(arrays) -> str:
    """SHA-256 of a sequence of arrays (dtype, shape and C-order bytes of each): pins what the fixture
    was made from (NumPy does not promise the same random streams across versions)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
