"""Networks conditioned on a second time, the span of the jump (MeanFlow's ``t - r``, a shortcut
model's step ``d``): ``span_embedding`` in the U-Net and the DiT. A fresh span branch adds exactly
zero, so a network trained without it restores (:func:`with_span_params`) and computes the same
function; once trained the branch makes the output depend on the span; it is the time MLP's twin;
``jax.jvp`` through it (``jvp=True`` layers) matches a finite difference; bad inputs are refused."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import backbones
from jaxdiff.models.denoiser import denoiser_apply, init_denoiser, with_span_params
from jaxdiff.models.dit import DiT
from jaxdiff.models.unet import UNet

SHAPE = (8, 8, 1)
CLASSES = 3
# groups=4: with a group per channel (the default 32 at 8 channels) GroupNorm would cancel temb's shift.
SIZES = {"unet": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, out_ch=1, groups=4),
         "dit": dict(patch_size=2, hidden_size=32, depth=2, num_heads=2, out_ch=1)}
MODULES = {"unet": UNet, "dit": DiT}
# The span branch's layers, the first then the last (zero-initialised), and the time MLP's twins.
BRANCH = {"unet": ("span_dense0", "span_dense1"), "dit": ("span_embedder_mlp_0", "span_embedder_mlp_2")}
TIME = {"unet": ("temb_dense0", "temb_dense1"), "dit": ("t_embedder_mlp_0", "t_embedder_mlp_2")}
BACKBONES = ("unet", "dit")


def network(name, **kw):
    return MODULES[name](num_classes=CLASSES, **SIZES[name], **kw)


def init(module, seed):
    return jax.jit(lambda key: init_denoiser(module, key, SHAPE))(jax.random.key(seed))


def perturb(params, key, scale=0.1):
    """Every parameter plus ``scale`` N(0, 1) noise: the zero-initialised ones stop being zero."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                               for p, k in zip(leaves, keys)])


def inputs(seed, batch=3):
    kx, kt, ks = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (batch, *SHAPE))
    t = 1000.0 * jax.random.uniform(kt, (batch,))
    span = t * jax.random.uniform(ks, (batch,))  # a span 0 <= t - r <= t
    return x, t, span, jnp.arange(batch) % (CLASSES + 1)  # labels, the null label among them


def trained_plain(name, seed=0):
    """Parameters of the network without the span branch, every one of them non-zero (a trained model's
    stand-in: the output is not the zeros of a fresh init)."""
    return perturb(init(network(name), seed), jax.random.key(seed + 100))


@pytest.mark.parametrize("name", BACKBONES)
def test_a_fresh_span_branch_adds_zero(name):
    """A freshly initialised span network is the plain network of the same shared parameters, for any
    span; so is the twin of a trained plain network completed by with_span_params (whose last span layer
    it forces to zero even when given a non-zero one)."""
    plain_apply, span_apply = (denoiser_apply(network(name, span_embedding=s)) for s in (False, True))
    assert (plain_apply.span_embedding, span_apply.span_embedding) == (False, True)
    plain_apply, span_apply = jax.jit(plain_apply), jax.jit(span_apply)
    fresh = init(network(name, span_embedding=True), 1)
    first, last = BRANCH[name]
    assert all(not np.any(leaf) for leaf in jax.tree_util.tree_leaves(fresh[last]))  # zero-initialised
    assert all(np.any(leaf) for leaf in jax.tree_util.tree_leaves(fresh[first]["kernel"]))

    x, t, span, y = inputs(0)
    # The module's own init: shared parameters made non-zero, the fresh branch kept as it is.
    shared = perturb({k: v for k, v in fresh.items() if k not in BRANCH[name]}, jax.random.key(7))
    expect = plain_apply(shared, x, t, y)
    assert float(jnp.abs(expect).mean()) > 1e-2  # a non-trivial function
    for s in (span, 0.0, None, span[::-1]):
        np.testing.assert_allclose(span_apply({**shared, first: fresh[first], last: fresh[last]}, x, t, y, span=s),
                                   expect, atol=1e-6)
    # A trained plain network completed with the branch of a fresh init, and with a perturbed one.
    plain = trained_plain(name)
    expect = plain_apply(plain, x, t, y)
    for source in (fresh, perturb(fresh, jax.random.key(3))):
        completed = with_span_params(plain, source)
        assert set(completed) == set(fresh)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, {k: completed[k] for k in plain}, plain))
        np.testing.assert_array_equal(completed[first]["kernel"], source[first]["kernel"])
        np.testing.assert_allclose(span_apply(completed, x, t, y, span=span), expect, atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_trained_span_branch_conditions_on_the_span(name):
    """With a non-zero last span layer the output depends on the span (and on nothing else new: the
    same span gives the same output, span=None is span 0)."""
    span_apply = jax.jit(denoiser_apply(network(name, span_embedding=True)))
    params = with_span_params(trained_plain(name), init(network(name, span_embedding=True), 1))
    last = BRANCH[name][1]
    params[last] = perturb(params[last], jax.random.key(5))
    x, t, span, y = inputs(1)
    out = span_apply(params, x, t, y, span=span)
    assert float(jnp.abs(out - span_apply(params, x, t, y, span=0.5 * span)).max()) > 1e-3
    np.testing.assert_array_equal(span_apply(params, x, t, y, span=span), out)
    np.testing.assert_allclose(span_apply(params, x, t, y), span_apply(params, x, t, y, span=jnp.zeros(3)),
                               atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_the_span_branch_is_the_time_mlp_twin(name):
    """The span branch embeds the span exactly as the time MLP embeds t and adds the result to t's
    embedding: with the time MLP's weights copied into it and span = t, the output is the plain
    network's with the time MLP's last layer doubled (temb + temb)."""
    plain = trained_plain(name)
    params = dict(plain)
    for twin, layer in zip(BRANCH[name], TIME[name]):
        params[twin] = plain[layer]
    doubled = dict(plain)
    doubled[TIME[name][1]] = jax.tree_util.tree_map(lambda p: 2 * p, plain[TIME[name][1]])
    x, t, _, y = inputs(2)
    out = denoiser_apply(network(name, span_embedding=True))(params, x, t, y, span=t)
    np.testing.assert_allclose(out, denoiser_apply(network(name))(doubled, x, t, y), atol=1e-5)
    assert float(jnp.abs(out - denoiser_apply(network(name))(plain, x, t, y)).max()) > 1e-3


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("span_of_t", [False, True], ids=["fixed-span", "span=t-r"])
def test_jvp_matches_a_finite_difference(name, span_of_t):
    """``jax.jvp`` of ``u(x, t) = apply(params, x, t, span)`` with tangent ``(v, 1)`` (MeanFlow's total
    derivative ``v . d_x u + d_t u``), t in network time, equals the central difference with step
    2^-6 (exact in float32 at these t) to 0.5% (it agrees to about 0.05%), while the derivative without
    the t part, without the x part, or without the span's dependence on t misses it by 30-80%. The ``jvp=True`` layers compute the same values."""
    module = network(name, span_embedding=True, jvp=True)
    params = perturb(init(module, 1), jax.random.key(9))
    apply = denoiser_apply(module)
    x, t, span, y = inputs(3)
    fast = denoiser_apply(network(name, span_embedding=True))  # the custom-VJP layers
    np.testing.assert_allclose(apply(params, x, t, y, span=span), fast(params, x, t, y, span=span), atol=1e-6)
    x, _, _, y = inputs(4, batch=2)
    v = 0.1 * jax.random.normal(jax.random.key(11), x.shape)
    t = jnp.array([300.0, 712.5])  # 1000 * 0.3 and 1000 * 0.7125
    r = jnp.array([100.0, 587.5])

    def u(x, t, span_tracks_t=True):
        span = (t if span_tracks_t else jax.lax.stop_gradient(t)) - r if span_of_t else jnp.array([50.0, 125.0])
        return apply(params, x, t, y, span=span)

    _, tangent = jax.jvp(u, (x, t), (v, jnp.ones_like(t)))
    eps = 2.0 ** -6
    fd = (u(x + eps * v, t + eps) - u(x - eps * v, t - eps)) / (2 * eps)
    rel = lambda a: float(jnp.linalg.norm(a - fd) / jnp.linalg.norm(fd))  # noqa: E731
    assert rel(tangent) < 5e-3, rel(tangent)
    assert rel(jax.jvp(u, (x, t), (v, jnp.zeros_like(t)))[1]) > 0.2  # d_t u matters
    assert rel(jax.jvp(u, (x, t), (jnp.zeros_like(x), jnp.ones_like(t)))[1]) > 0.2  # v . d_x u matters
    if span_of_t:
        assert rel(jax.jvp(lambda x, t: u(x, t, False), (x, t), (v, jnp.ones_like(t)))[1]) > 0.2


@pytest.mark.parametrize("name", BACKBONES)
def test_bad_inputs_are_refused(name):
    """span given to a network without span_embedding; with_span_params across architectures, without a
    span branch in span_params, or onto parameters that already have one."""
    x, t, span, y = inputs(5)
    plain = init(network(name), 0)
    for call in (lambda: network(name).apply({"params": plain}, x, t, y, span=span),
                 lambda: denoiser_apply(network(name))(plain, x, t, y, span=span)):
        with pytest.raises(ValueError, match="span_embedding"):
            call()
    fresh = init(network(name, span_embedding=True), 1)
    wider = {"unet": dict(ch=16), "dit": dict(hidden_size=64)}[name]
    other = MODULES[name](num_classes=CLASSES, **{**SIZES[name], **wider}, span_embedding=True)
    with pytest.raises(ValueError, match="shape"):
        with_span_params(plain, init(other, 1))
    with pytest.raises(ValueError, match="missing"):
        with_span_params(plain, init(network({"unet": "dit", "dit": "unet"}[name], span_embedding=True), 1))
    with pytest.raises(ValueError, match="no span branch"):
        with_span_params(plain, plain)
    with pytest.raises(ValueError, match="already"):
        with_span_params(fresh, fresh)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builders_pass_span_embedding(name):
    """``Backbone.build(..., span_embedding=True)`` builds the span network; the default builds none."""
    backbone = backbones.BACKBONES[name]
    values = {"unet": dict(SIZES["unet"], num_heads=1, downsample_padding="same", norm_eps=1e-6,
                           head_dim=0, flip_sin_to_cos=False, freq_shift=1.0),
              "dit": dict(size="", depth=2, hidden_size=32, num_heads=2, patch_size=2, mlp_ratio=4.0,
                          learn_sigma=False, attention="")}[name]
    fields = {f: values[f] for f in backbone.fields}
    assert backbone.build(fields, 1, CLASSES).span_embedding is False
    module = backbone.build(fields, 1, CLASSES, jnp.float32, False, span_embedding=True)
    assert module.span_embedding is True and set(BRANCH[name]) <= set(init(module, 0))


def test_apply_of_a_module_without_the_span_keyword():
    """``denoiser_apply`` passes ``span`` only when given: a module without the keyword keeps working
    (and says it has no span input)."""

    class Scale(nn.Module):
        num_classes: int = 0

        @nn.compact
        def __call__(self, x, t, y=None, train=False):
            return x * self.param("w", nn.initializers.ones, ())

    params = init_denoiser(Scale(), jax.random.key(0), SHAPE)
    apply = denoiser_apply(Scale())
    x, t, span, _ = inputs(6)
    assert apply.span_embedding is False
    np.testing.assert_array_equal(apply(params, x, t), x)
    np.testing.assert_array_equal(apply(params, x, t, dropout_key=jax.random.key(1)), x)
    with pytest.raises(TypeError):
        apply(params, x, t, span=span)
