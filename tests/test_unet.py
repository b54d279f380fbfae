"""The U-Net: output shapes, the exact DDPM parameter count, conditioning, bad sizes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models.unet import UNet, check_image_size, count_params, timestep_embedding


def test_ddpm_cifar10_parameter_count():
    model = UNet()  # defaults are the DDPM CIFAR-10 network
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
                                               jnp.zeros((1,), jnp.int32)))
    assert count_params(shapes["params"]) == 35_746_307


@pytest.mark.parametrize("size,ch_mult,classes", [(8, (1, 2), 0), (12, (1, 2, 2), 10)])
def test_output_shape_and_conditioning(size, ch_mult, classes):
    model = UNet(ch=8, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(size // 2,), dropout=0.1,
                 out_ch=2, num_classes=classes)
    x = jax.random.normal(jax.random.key(0), (3, size, size, 2))
    t = jnp.array([0, 5, 9])
    y = jnp.array([0, 1, classes]) if classes else None
    params = model.init({"params": jax.random.key(1)}, x, t, y)["params"]
    # Perturb the zero-initialised output layers so outputs depend on the inputs.
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params)
    out = model.apply({"params": params}, x, t, y)
    assert out.shape == (3, size, size, 2) and out.dtype == jnp.float32
    if classes:
        assert params["class_embed"]["embedding"].shape == (classes + 1, 32)
        out2 = model.apply({"params": params}, x, t, jnp.array([1, 1, classes]))
        assert not np.allclose(out[0], out2[0]) and np.allclose(out[2], out2[2], atol=1e-6)
    train_out = model.apply({"params": params}, x, t, y, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(train_out, out)  # dropout active in training only


def test_timestep_embedding_matches_numpy():
    t = np.array([0, 1, 17, 999])
    half = 8
    freqs = np.exp(-math.log(10000) * np.arange(half) / (half - 1))
    ref = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), 16), ref, atol=2e-4)


@pytest.mark.parametrize("size", [0, 30, 33])
def test_image_size_that_cannot_be_downsampled(size):
    with pytest.raises(ValueError, match=f"image size {size} cannot be downsampled 3 times"):
        check_image_size(size, (1, 2, 2, 2))
