"""The library's entry points refuse inconsistent arguments with one line in their own terms (argument
names of the library's functions, never the command line's config fields) instead of training or
sampling on them. Each check is traced, not compiled (``jax.eval_shape``), except the donated step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff.core import guidance

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, groups=8)
SHAPE = (4, 4, 1)
FAMILY = jaxdiff.families.ddpm(jaxdiff.make_tables(jaxdiff.make_betas("linear", 20)))
OPTIMIZER = jaxdiff.make_optimizer(jaxdiff.learning_rate_schedule(1e-3, warmup_steps=0))
CONFIG_FIELD = re.compile(r"(?<![\w.])(model|data|diffusion|training|sampling|edit)\.[a-z_]+|class_conditional")


def refused(fn, *words):
    """Run ``fn``; it must raise a one-line ``ValueError`` holding ``words`` and naming no config field."""
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not CONFIG_FIELD.search(message), message
    return message


def traced_step(model, batch, **options):
    """The train step of ``model`` traced (not compiled) on ``batch``; returns its metrics' shapes."""
    params = jax.eval_shape(lambda: jaxdiff.init_denoiser(model, jax.random.key(0), SHAPE))
    state = jax.eval_shape(lambda p: jaxdiff.init_train_state(p, OPTIMIZER), params)
    step = jaxdiff.make_train_step(jaxdiff.denoiser_apply(model), FAMILY, OPTIMIZER, **options)
    return jax.eval_shape(step, state, batch)[1]


def images(dtype=np.float32):
    return np.zeros((2, *SHAPE), dtype)


# --------------------------------------------------------------------------- the train step

def test_integer_images_need_a_preprocess_that_scales_them():
    unet = jaxdiff.UNet(out_ch=1, **TINY)
    refused(lambda: traced_step(unet, {"image": images(np.uint8)}), "uint8", "[-1, 1]",
            "preprocess=jaxdiff.data.preprocess")
    assert traced_step(unet, {"image": images(np.uint8)}, preprocess=jaxdiff.data.preprocess)["loss"].shape == ()
    refused(lambda: traced_step(unet, {"image": images()}, preprocess=lambda x, key: x.astype(jnp.int32)),
            "preprocess returned images of dtype int32")


def test_the_batch_keys_are_the_documented_ones():
    unet = jaxdiff.UNet(out_ch=1, num_classes=3, **TINY)
    labels = np.zeros(2, np.int32)
    refused(lambda: traced_step(unet, {"image": images(), "labels": labels}, num_classes=3),
            "'labels'", "'image'", "'label'", "'noise'")
    refused(lambda: traced_step(unet, {"image": images()}, num_classes=3), "num_classes=3", "no 'label'")
    assert traced_step(unet, {"image": images(), "label": labels}, num_classes=3)["loss"].shape == ()
    assert all(f'``"{key}"``' in jaxdiff.make_train_step.__doc__ for key in ("image", "label", "noise"))


@pytest.mark.parametrize("network,num_classes,words", [
    (jaxdiff.UNet(out_ch=1, num_classes=10, **TINY), 0, ("num_classes=0", "built with num_classes=10", "11 rows")),
    (jaxdiff.UNet(out_ch=1, **TINY), 10, ("num_classes=10", "built with num_classes=0", "no class embedding")),
    (jaxdiff.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, out_ch=1, num_classes=3), 2,
     ("num_classes=2", "built with num_classes=3")),
])
def test_num_classes_must_be_the_networks(network, num_classes, words):
    apply_fn = jaxdiff.denoiser_apply(network)
    assert apply_fn.num_classes == network.num_classes
    refused(lambda: jaxdiff.make_train_step(apply_fn, FAMILY, OPTIMIZER, num_classes=num_classes), *words)
    key = jax.random.key(0)
    sampler = jaxdiff.make_sampler(FAMILY, "ddim", num_steps=2)
    refused(lambda: jaxdiff.generate(apply_fn, {}, sampler, (2, *SHAPE), key, num_classes=num_classes), *words)


def test_a_network_with_other_output_channels_is_refused_by_the_step_and_by_generate():
    rgb = jaxdiff.UNet(**TINY)  # out_ch=3 for 1-channel images
    refused(lambda: traced_step(rgb, {"image": images()}), "outputs 3 channels for images of 1 channel", "out_ch=1")
    shapes = jax.eval_shape(lambda: jaxdiff.init_denoiser(rgb, jax.random.key(0), SHAPE))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    sampler = jaxdiff.make_sampler(FAMILY, "ddim", num_steps=2)
    refused(lambda: jaxdiff.generate(jaxdiff.denoiser_apply(rgb), params, sampler, (2, *SHAPE), jax.random.key(1)),
            "outputs 3 channels for images of 1 channel", "out_ch=1")


def test_a_shape_changing_network_is_refused():
    net = lambda x, t, y: x[:, :2]  # noqa: E731
    denoise = guidance.guided_denoise_fn(net, None, 1.0, None)
    refused(lambda: jax.eval_shape(denoise, jnp.zeros((2, *SHAPE)), jnp.zeros((2,), jnp.int32)),
            "inputs of shape (2, 4, 4, 1)", "outputs of shape (2, 2, 4, 1)")


# --------------------------------------------------------------------------- labels at sampling

def test_labels_are_checked_against_the_networks_classes():
    sampler = jaxdiff.make_sampler(FAMILY, "ddim", num_steps=2)
    never = lambda *args: pytest.fail("the network was called")  # noqa: E731
    key = jax.random.key(0)
    refused(lambda: jaxdiff.generate(never, {}, sampler, (2, *SHAPE), key, labels=[0, 1]),
            "labels given, but num_classes=0", "no class embedding")
    refused(lambda: jaxdiff.generate(never, {}, sampler, (2, *SHAPE), key, labels=[0, 3], num_classes=3),
            "class label 3 is out of range", "0..2")
    refused(lambda: jaxdiff.generate(never, {}, sampler, (2, *SHAPE), key, labels=[-1, 0], num_classes=3),
            "class label -1 is out of range")
    refused(lambda: guidance.guided_denoise_fn(never, jnp.zeros(2, jnp.int32), 1.0, None),
            "labels given, but null_label=None")


def test_the_unet_refuses_an_image_size_in_its_own_terms():
    unet = jaxdiff.UNet(out_ch=3, **TINY)
    nchw = jnp.zeros((1, 3, 8, 8))
    refused(lambda: jax.eval_shape(lambda: unet.init(jax.random.key(0), nchw, jnp.zeros((1,), jnp.int32))),
            "image size 3 cannot be downsampled 1 times", "ch_mult=(1, 2)", "NHWC")


# --------------------------------------------------------------------------- a donated state

def test_a_fresh_state_can_be_donated():
    def apply_fn(params, x, t, y=None, dropout_key=None):
        return params["w"] * x + params["b"]

    state = jaxdiff.init_train_state({"w": jnp.ones(()), "b": jnp.zeros((1,))}, OPTIMIZER, num_ema_profiles=2)
    pointers = [a.unsafe_buffer_pointer() for a in jax.tree.leaves((state.params, state.ema_params,
                                                                    state.ema_profiles))]
    assert len(set(pointers)) == len(pointers)  # every copy of the parameters in a buffer of its own
    step = jax.jit(jaxdiff.make_train_step(apply_fn, FAMILY, OPTIMIZER, ema_stds=(0.05, 0.1)), donate_argnums=0)
    batch = {"image": jax.random.uniform(jax.random.key(2), (4, *SHAPE), minval=-1.0, maxval=1.0)}
    for _ in range(2):
        state, metrics = step(state, batch)
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
