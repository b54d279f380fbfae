"""The FID variant of InceptionV3 in Flax: 2048-d pool3 features, weights from a user-supplied file.

FIDs in papers (TTUR's TensorFlow code, pytorch-fid, clean-fid, DDPM, DDIM, ...) are computed with
the 2015-12-05 TensorFlow Inception graph. pytorch-fid ships a port of it,
``pt_inception-2015-12-05-6726825d.pth``, whose architecture differs from torchvision's InceptionV3
in four places, all reproduced here (``FIDInceptionA/C/E_1/E_2`` in pytorch-fid):

* the average pools inside the A, C and E blocks exclude the zero padding (``count_include_pad=False``);
* the pool branch of the last E block (``Mixed_7c``) is a 3x3 *max* pool, not an average pool;
* the classifier has 1008 outputs (unused here: features are taken before it).

Input: uint8 ``[B, H, W, 3]`` -> ``[0, 1]`` -> bilinear resize to 299x299 (half-pixel centres,
no anti-aliasing: ``F.interpolate(..., align_corners=False)``) -> ``2 x - 1``. Output: the global
average pool of ``Mixed_7c``, ``[B, 2048]``. ``BasicConv2d`` is conv (no bias) -> BatchNorm
(inference, eps 1e-3) -> ReLU, as in torchvision.

Weights file: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` itself (read without PyTorch by
:mod:`jaxdiff.common.torch_pickle`, either of ``torch.save``'s formats), or an ``.npz`` holding the
same state dict unchanged, one array per key, PyTorch names and layouts
(``Mixed_5b.branch1x1.conv.weight`` ``[O, I, kh, kw]``, ``...bn.weight``, ``...bn.bias``,
``...bn.running_mean``, ``...bn.running_var``; other keys such as ``fc.*`` are ignored), converted
on any machine with PyTorch::

    import numpy as np, torch
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    np.savez("pt_inception-2015-12-05.npz", **{k: v.numpy() for k, v in sd.items()})

:func:`load_weights` checks every array's presence and shape before anything is compiled.
:func:`weights_provenance` says whether the file is pytorch-fid's released one (torch.hub names it
by the first 8 hex digits of its SHA-256, ``6726825d``); an ``.npz`` never is, whatever it holds.
The architecture is checked block by block against pytorch-fid's own module on random weights
(``tests/test_inception_parity.py``).
"""

from __future__ import annotations

import functools
import hashlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import paths, torch_pickle
from jaxdiff.common.array_files import ArrayFileError

FEATURE_DIM = 2048
INPUT_SIZE = 299
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"  # torch.hub's check: a file name's -<hex> suffix starts its SHA-256
_HINT = f"give pytorch-fid's {PYTORCH_FID_FILE} (or an .npz of its state dict) as docs/evaluation.md shows"


class InceptionWeightsError(ValueError):
    """The Inception weights file is missing, unreadable, or does not fit the FID InceptionV3."""


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU; torchvision's ``BasicConv2d``."""

    features: int
    kernel: tuple = (1, 1)
    strides: int = 1
    padding: tuple = (0, 0)  # (pad_h, pad_w), as PyTorch's symmetric ``padding``

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=(self.strides, self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    """3x3 stride-1 average pool with padding 1 that averages only the real pixels (TF semantics)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """``max_pool=False``: FIDInceptionE_1 (Mixed_7b); ``True``: FIDInceptionE_2 (Mixed_7c)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """``__call__(x float [B, H, W, 3] in [-1, 1], already 299x299) -> pool3 features [B, 2048]``."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(False, name="Mixed_7b")(x)
        x = InceptionE(True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# The named blocks of FIDInceptionV3, in order: the modules pytorch-fid's InceptionV3 runs (its max
# pools between them are not modules here)
BLOCKS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
          "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c")


def preprocess(images_uint8: jax.Array) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 299, 299, 3]`` in [-1, 1], as pytorch-fid:
    ``x / 255``, bilinear resize (half-pixel centres, no anti-aliasing), then ``2 x - 1``."""
    x = images_uint8.astype(jnp.float32) / 255.0
    b, _, _, c = x.shape
    x = jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, c), method="bilinear", antialias=False)
    return 2.0 * x - 1.0


def variable_shapes(input_size: int = 75) -> dict:
    """Shapes of every Flax variable (``params`` and ``batch_stats``), without computing anything."""
    return jax.eval_shape(lambda: FIDInceptionV3().init(
        jax.random.PRNGKey(0), jnp.zeros((1, input_size, input_size, 3), jnp.float32)))


# Flax leaf name -> (PyTorch suffix, conversion of the PyTorch array into the Flax layout)
_LEAVES = {
    ("params", "conv", "kernel"): ("conv.weight", lambda w: np.transpose(w, (2, 3, 1, 0))),  # OIHW -> HWIO
    ("params", "bn", "scale"): ("bn.weight", lambda w: w),
    ("params", "bn", "bias"): ("bn.bias", lambda w: w),
    ("batch_stats", "bn", "mean"): ("bn.running_mean", lambda w: w),
    ("batch_stats", "bn", "var"): ("bn.running_var", lambda w: w),
}


@functools.cache
def torch_key_map() -> dict:
    """``{pytorch key: (flax collection, flax path tuple, flax shape, pytorch shape)}`` for every weight
    (traced once per process, and shared: do not modify it)."""
    out = {}
    for collection, tree in variable_shapes().items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            names = tuple(p.key for p in path)
            module, layer, leaf_name = names[:-2], names[-2], names[-1]
            suffix, _ = _LEAVES[(collection, layer, leaf_name)]
            shape = tuple(leaf.shape)
            torch_shape = (shape[3], shape[2], shape[0], shape[1]) if leaf_name == "kernel" else shape
            out[".".join(module) + "." + suffix] = (collection, names, shape, torch_shape)
    return out


def load_weights(path: str) -> dict:
    """Read the weights file at ``path`` (a ``torch.save``'d state dict such as pytorch-fid's ``.pth``,
    or an ``.npz`` of one) into Flax variables ``{"params": ..., "batch_stats": ...}``.

    Raises :class:`InceptionWeightsError` (one line saying what to do) if the file is missing or
    unreadable, or any expected array is absent or has the wrong shape.
    """
    if not path:
        raise InceptionWeightsError(f"eval.feature_extractor='inception' needs eval.inception_weights: {_HINT}")
    if not os.path.isfile(path):
        raise InceptionWeightsError(f"Inception weights file {path} does not exist: {_HINT}")
    return variables_from_state_dict(_read_state_dict(path), path)


def _read_state_dict(path: str) -> dict:
    """``{pytorch key: array}`` from a ``torch.save`` file or an ``.npz`` (told apart by content)."""
    if torch_pickle.is_torch_file(path):
        try:
            return torch_pickle.load_state_dict(path)
        except torch_pickle.TorchPickleError as e:
            raise InceptionWeightsError(f"cannot read Inception weights ({e}): {_HINT}") from None
    try:
        return paths.load_npz(path)
    except ArrayFileError as e:  # a truncated download, a file of another kind, ...
        raise InceptionWeightsError(f"cannot read Inception weights as .pth or .npz ({e}): {_HINT}") from None


def variables_from_state_dict(arrays: dict, source: str = "state dict") -> dict:
    """Flax variables from pytorch-fid's state dict ``arrays`` (``{pytorch key: array}``, PyTorch
    layouts; extra keys ignored), every key and shape checked first (:class:`InceptionWeightsError`
    naming ``source``)."""
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, (collection, names, _, torch_shape) in torch_key_map().items():
        if key not in arrays:
            raise InceptionWeightsError(f"Inception weights {source} lack {key!r}: {_HINT}")
        w = arrays[key]
        if tuple(w.shape) != torch_shape:
            raise InceptionWeightsError(
                f"Inception weights {source}: {key} has shape {tuple(w.shape)}, the FID InceptionV3 needs "
                f"{torch_shape}: {_HINT}")
        convert = _LEAVES[(collection, names[-2], names[-1])][1]
        node = variables[collection]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.asarray(convert(w), np.float32)
    return variables


def _file_digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: str) -> str:
    """SHA-1 prefix of the weights file (names reference statistics computed with it)."""
    return _file_digest(path, "sha1")[:12]


def weights_provenance(path: str, released_prefix: str = PYTORCH_FID_SHA256_PREFIX) -> dict:
    """What is known of the weights file's origin: its SHA-256 and whether it is pytorch-fid's
    released file (``inception_weights_verified``: the SHA-256 starts with ``released_prefix``, as
    torch.hub checks it on download). An ``.npz`` converted from it has another hash and stays
    unverified: nothing in it shows which weights it was made from."""
    sha256 = _file_digest(path, "sha256")
    return {"inception_weights_sha256": sha256, "inception_weights_verified": sha256.startswith(released_prefix)}


def make_feature_fn(variables: dict):
    """``images uint8 [B, H, W, C] -> pool3 features float32 [B, 2048]`` (compiled; the weights are
    an argument of the compiled function, not constants baked into it). Grey images (C = 1) are
    repeated to three channels first, as pytorch-fid users do for MNIST."""
    model = FIDInceptionV3()

    @jax.jit
    def apply(variables, images):
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        return model.apply(variables, preprocess(images))

    return lambda images: apply(variables, images)


def _is_block(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and len(module.path) == 1


def make_block_fn(variables: dict):
    """``x float32 [B, 299, 299, 3] in [-1, 1] -> {block: output [B, h, w, c] for block in BLOCKS,
    "pool3": [B, 2048]}`` (compiled): every block's output, to compare with pytorch-fid's module
    layer by layer (``x`` is :func:`preprocess`'s output)."""
    model = FIDInceptionV3()

    @jax.jit
    def apply(variables, x):
        pool3, state = model.apply(variables, x, capture_intermediates=_is_block, mutable=["intermediates"])
        outputs = {name: state["intermediates"][name]["__call__"][0] for name in BLOCKS}
        return {**outputs, "pool3": pool3}

    return lambda x: apply(variables, x)
