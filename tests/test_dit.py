"""The Diffusion Transformer: shapes, the paper's parameter counts, adaLN-Zero, the patch and
positional maths, one block and the whole network against references (a float64 NumPy transcription
and the official code's outputs in ``tests/fixtures/dit_official.npz``), bad sizes, and a tiny DiT
that trains."""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxdiff import data, families, make_betas, make_tables
from jaxdiff.models.denoiser import denoiser_apply, init_denoiser
from jaxdiff.models.dit import (DIT_SIZES, DiT, DiTBlock, check_image_size, dit_from_name, modulate, patchify,
                                sincos_pos_embed_2d, timestep_frequency_embedding, unpatchify)
from jaxdiff.models.unet import count_params
from jaxdiff.training.optim import learning_rate_schedule, make_optimizer
from jaxdiff.training.state import init_train_state
from jaxdiff.training.step import make_train_step

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dit_official.npz")
TINY = dict(hidden_size=16, depth=1, num_heads=2)
# The model the value tests share (and train): digits-sized, conditional on 10 classes.
SMALL = dict(patch_size=2, hidden_size=32, depth=2, num_heads=2, out_ch=1, num_classes=10)
SMALL_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def small_params():
    return jax.jit(lambda key: init_denoiser(DiT(**SMALL), key, SMALL_SHAPE))(jax.random.key(0))


def perturb(params, key, scale=0.1):
    """Every parameter plus ``scale`` N(0, 1) noise: the zero-initialised ones stop being zero."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("patch,hw,in_ch,out_ch,classes,sigma,float_t", [
    (2, (8, 8), 1, 1, 0, False, False),
    (2, (6, 10), 2, 2, 0, True, True),
    (4, (16, 12), 3, 3, 10, True, True),
    (4, (32, 32), 4, 4, 1000, False, False),
    (8, (16, 16), 4, 2, 5, False, False),
    (8, (8, 24), 1, 3, 2, True, True),
])
def test_output_shapes(patch, hw, in_ch, out_ch, classes, sigma, float_t):
    """Shapes and dtypes by abstract evaluation (the values are checked below, on fewer configurations)."""
    model = DiT(patch_size=patch, out_ch=out_ch, num_classes=classes, learn_sigma=sigma, **TINY)
    params = jax.eval_shape(lambda: init_denoiser(model, jax.random.key(0), (*hw, in_ch)))
    channels = out_ch * (2 if sigma else 1)
    assert params["final_layer_linear"]["kernel"].shape == (16, patch * patch * channels)
    assert params["x_embedder"]["kernel"].shape == (patch, patch, in_ch, 16)
    assert ("y_embedder" in params) == (classes > 0)
    if classes:
        assert params["y_embedder"]["embedding"].shape == (classes + 1, 16)
    x = jax.ShapeDtypeStruct((3, *hw, in_ch), jnp.float32)
    t = jax.ShapeDtypeStruct((3,), jnp.float32 if float_t else jnp.int32)
    ys = [jax.ShapeDtypeStruct((3,), jnp.int32), None] if classes else [None]
    for y in ys:
        out = jax.eval_shape(denoiser_apply(model), params, x, t, y)
        assert out.shape == (3, *hw, out_ch) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,depth,hidden,heads,patch", [("XL/2", 28, 1152, 16, 2), ("DiT-S/8", 12, 384, 6, 8),
                                                          ("B/4", 12, 768, 12, 4), ("L/2", 24, 1024, 16, 2)])
def test_dit_from_name(name, depth, hidden, heads, patch):
    model = dit_from_name(name, out_ch=3, num_classes=7)
    assert (model.depth, model.hidden_size, model.num_heads, model.patch_size) == (depth, hidden, heads, patch)
    assert (model.out_ch, model.num_classes, model.learn_sigma) == (3, 7, False)
    assert DIT_SIZES[name.removeprefix("DiT-").split("/")[0]] == (depth, hidden, heads)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown DiT model 'XXL/2'"):
        dit_from_name("XXL/2")


# -------------------------------------------------------------------------------- parameter counts


def closed_form_count(depth, hidden, patch, in_ch, out_ch, num_classes, learn_sigma, mlp_ratio=4.0):
    """DiT's parameter count from the architecture (no positional table: it is not a parameter)."""
    linear = lambda i, o: i * o + o  # noqa: E731
    mlp = int(hidden * mlp_ratio)
    block = (linear(hidden, 6 * hidden) + linear(hidden, 3 * hidden) + linear(hidden, hidden)
             + linear(hidden, mlp) + linear(mlp, hidden))
    return (linear(patch * patch * in_ch, hidden)                                   # patch embedding
            + linear(256, hidden) + linear(hidden, hidden)                          # timestep MLP
            + ((num_classes + 1) * hidden if num_classes else 0)                    # label table
            + depth * block
            + linear(hidden, 2 * hidden) + linear(hidden, patch * patch * out_ch * (2 if learn_sigma else 1)))


def abstract_count(model, hw, in_ch):
    x = jnp.zeros((1, *hw, in_ch))
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    return count_params(jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, t, y))["params"])


# (name, 32x32x4 latents, 1000 classes, learn_sigma): the count here, and the official code's
# sum(p.numel() for p in model.parameters()), which includes the frozen N x D positional table
# (numbers read off facebookresearch/DiT's models.py, instantiated at these settings).
PAPER_COUNTS = [("XL/2", 674_834_720, 675_129_632), ("S/2", 32_865_056, 32_963_360)]


@pytest.mark.parametrize("name,count,official", PAPER_COUNTS)
def test_paper_parameter_counts(name, count, official):
    model = dit_from_name(name, out_ch=4, num_classes=1000, learn_sigma=True)
    got = abstract_count(model, (32, 32), 4)
    assert got == count == closed_form_count(model.depth, model.hidden_size, 2, 4, 4, 1000, True)
    assert got + (32 // 2) ** 2 * model.hidden_size == official
    assert round(got / 1e6) == {"XL/2": 675, "S/2": 33}[name]  # the paper's Table 4: 675M and 33M


@pytest.mark.parametrize("kwargs,hw,in_ch", [
    (dict(patch_size=8, hidden_size=768, depth=12, num_heads=12, out_ch=3), (64, 48), 3),
    (dict(patch_size=4, hidden_size=64, depth=3, num_heads=4, mlp_ratio=2.5, out_ch=1, num_classes=10,
          learn_sigma=True), (8, 8), 1),
])
def test_parameter_count_matches_closed_form(kwargs, hw, in_ch):
    model = DiT(**kwargs)
    assert abstract_count(model, hw, in_ch) == closed_form_count(
        model.depth, model.hidden_size, model.patch_size, in_ch, model.out_ch, model.num_classes,
        model.learn_sigma, model.mlp_ratio)


# ------------------------------------------------------------------------------------- adaLN-Zero


def block_case():
    """A block of 3 heads of 8 on 7 tokens, its inputs and its initial parameters."""
    block = DiTBlock(hidden_size=24, num_heads=3)
    x = jax.random.normal(jax.random.key(0), (2, 7, 24))
    c = jax.random.normal(jax.random.key(1), (2, 24))
    return block, x, c, jax.jit(block.init)({"params": jax.random.key(2)}, x, c)["params"]


def test_block_is_identity_at_init():
    block, x, c, params = block_case()
    assert not np.any(params["adaLN_modulation"]["kernel"]) and not np.any(params["adaLN_modulation"]["bias"])
    apply = jax.jit(block.apply)
    np.testing.assert_array_equal(apply({"params": params}, x, c), x)
    # With the modulation perturbed it is not the identity any more.
    assert not np.allclose(apply({"params": perturb(params, jax.random.key(3))}, x, c), x, atol=1e-3)


def test_network_outputs_zero_at_init_and_then_depends_on_t_and_y(small_params):
    model = DiT(**SMALL)
    x = jax.random.normal(jax.random.key(1), (4, *SMALL_SHAPE))
    t, y = jnp.array([3, 3, 3, 3]), jnp.array([0, 1, 10, 2])

    @jax.jit
    def outputs(params):
        apply = denoiser_apply(model)
        return (apply(params, x, t, y), apply(params, x, jnp.array([3, 500, 3, 3]), y),
                apply(params, x, t, jnp.array([7, 1, 10, 2])), apply(params, x, t, None))

    out, other_t, other_y, null = map(np.asarray, outputs(small_params))
    assert not np.any(out) and not np.any(null)  # exactly zero
    # The official initialisation otherwise: label table and timestep MLP N(0, 0.02), zero biases,
    # xavier-uniform on the flattened patch kernel (limit sqrt(6 / (fan_in + fan_out)), fan_in = p p C).
    assert abs(float(jnp.std(small_params["y_embedder"]["embedding"])) - 0.02) < 0.004
    assert abs(float(jnp.std(small_params["t_embedder_mlp_0"]["kernel"])) - 0.02) < 0.002
    qkv = small_params["blocks_0"]["attn_qkv"]
    assert not np.any(qkv["bias"]) and float(jnp.max(jnp.abs(qkv["kernel"]))) <= math.sqrt(6 / (32 + 96))
    limit, kernel = math.sqrt(6 / (2 * 2 * 1 + 32)), small_params["x_embedder"]["kernel"]
    assert 0.8 * limit < float(jnp.max(jnp.abs(kernel))) <= limit
    for name in ("final_layer_adaLN_modulation", "final_layer_linear", "blocks_1/adaLN_modulation"):
        layer = small_params
        for part in name.split("/"):
            layer = layer[part]
        assert not np.any(layer["kernel"]) and not np.any(layer["bias"]), name

    out, other_t, other_y, null = map(np.asarray, outputs(perturb(small_params, jax.random.key(2))))
    assert out.std() > 1e-2
    assert np.allclose(out[[0, 2, 3]], other_t[[0, 2, 3]]) and not np.allclose(out[1], other_t[1], atol=1e-3)
    assert np.allclose(out[1:], other_y[1:]) and not np.allclose(out[0], other_y[0], atol=1e-3)
    # y=None is the null label (row 10), which differs from the real ones.
    np.testing.assert_allclose(null[2], out[2], rtol=1e-6, atol=1e-6)
    assert not np.allclose(null[0], out[0], atol=1e-3) and not np.allclose(null[1], out[1], atol=1e-3)


# --------------------------------------------------------------------------- patches and positions


def patchify_reference(x, p):
    """Token ``i gw + j`` = the patch at (i, j) flattened (rows, columns, channels), by loops."""
    b, h, w, c = x.shape
    tokens = [x[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(b, -1)
              for i in range(h // p) for j in range(w // p)]
    return np.stack(tokens, axis=1)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), gh=st.integers(1, 4), gw=st.integers(1, 4), p=st.sampled_from([1, 2, 3, 4, 8]),
       c=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_patchify_unpatchify_are_inverse(b, gh, gw, p, c, seed):
    x = np.random.default_rng(seed).normal(size=(b, gh * p, gw * p, c)).astype(np.float32)
    tokens = np.asarray(patchify(x, p))
    np.testing.assert_array_equal(tokens, patchify_reference(x, p))
    np.testing.assert_array_equal(np.asarray(unpatchify(tokens, p, gh * p, gw * p, c)), x)
    other = np.random.default_rng(seed + 1).normal(size=tokens.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(patchify(unpatchify(other, p, gh * p, gw * p, c), p)), other)


def official_get_2d_sincos_pos_embed(embed_dim, grid_size):
    """facebookresearch/DiT's get_2d_sincos_pos_embed (from MAE), transcribed in float64."""
    grid_h = np.arange(grid_size, dtype=np.float64)
    grid_w = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("dim,grid", [(8, 1), (8, 3), (32, 4), (384, 16), (1152, 16)])
def test_pos_embed_matches_official(dim, grid):
    got = sincos_pos_embed_2d(dim, grid)
    assert got.shape == (grid * grid, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, official_get_2d_sincos_pos_embed(dim, grid), rtol=0, atol=1e-7)


def test_pos_embed_of_a_rectangular_grid():
    """Token (i, j) of a gh x gw grid gets what (i, j) gets in a square grid: [emb(j), emb(i)]."""
    square = sincos_pos_embed_2d(16, 3)
    np.testing.assert_array_equal(sincos_pos_embed_2d(16, (2, 3)), square[:6])
    np.testing.assert_array_equal(sincos_pos_embed_2d(16, (3, 2)), square.reshape(3, 3, 16)[:, :2].reshape(6, 16))


def test_timestep_frequency_embedding_matches_official_formula():
    t = np.array([0.0, 1.0, 17.0, 999.0, 0.25])
    half = 128
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    ref = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    got = timestep_frequency_embedding(jnp.asarray(t, jnp.float32))
    assert got.shape == (5, 256)
    np.testing.assert_allclose(got, ref, atol=5e-4)  # float32 arguments up to 999
    np.testing.assert_allclose(timestep_frequency_embedding(jnp.array([0, 1, 17, 999])), got[:4], atol=1e-6)


def test_modulate():
    x, shift, scale = np.ones((2, 3, 4)), np.arange(8.0).reshape(2, 4), np.full((2, 4), 0.5)
    np.testing.assert_array_equal(modulate(x, shift, scale), 1.5 + np.broadcast_to(shift[:, None], (2, 3, 4)))


# ------------------------------------------------------------------- one block, float64 reference


def numpy_block(x, c, p, heads, mlp_eps=1e-6):
    """A DiT block in float64: adaLN-Zero modulation, LayerNorm, multi-head attention, GELU-tanh MLP."""
    lin = lambda v, name: v @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731

    def ln(v):
        mu = v.mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + mlp_eps)

    b, n, d = x.shape
    hd = d // heads
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = np.split(lin(silu(c), "adaLN_modulation"), 6, axis=-1)
    h = ln(x) * (1 + scale_a[:, None]) + shift_a[:, None]
    qkv = lin(h, "attn_qkv")
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, heads, hd) for i in range(3))
    logits = np.einsum("bnhe,bmhe->bhnm", q, k) / np.sqrt(hd)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("bhnm,bmhe->bnhe", probs, v).reshape(b, n, d)
    x = x + gate_a[:, None] * lin(attn, "attn_proj")
    h = ln(x) * (1 + scale_m[:, None]) + shift_m[:, None]
    u = lin(h, "mlp_fc1")
    gelu = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    return x + gate_m[:, None] * lin(gelu, "mlp_fc2")


@pytest.mark.parametrize("x_scale", [1.0, 1e-3])  # 1e-3: the LayerNorm's eps matters
def test_block_matches_float64_reference(x_scale):
    block, x, c, params = block_case()
    x = x * x_scale
    params = perturb(params, jax.random.key(3), 0.3)
    got = jax.jit(block.apply)({"params": params}, x, c)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    want = numpy_block(np.asarray(x, np.float64), np.asarray(c, np.float64), p64, 3)
    assert float(np.max(np.abs(want - x))) > 0.1  # the reference block does something
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * x_scale)


# --------------------------------------------------------------- the official code's outputs


def official_to_params(sd, depth):
    """The module docstring's key mapping, official state dict -> jaxdiff params (NumPy)."""
    used = {"pos_embed"}

    def take(key):
        used.add(key)
        return sd[key]

    linear = lambda key: {"kernel": take(f"{key}.weight").T, "bias": take(f"{key}.bias")}  # noqa: E731
    params = {
        "x_embedder": {"kernel": take("x_embedder.proj.weight").transpose(2, 3, 1, 0),
                       "bias": take("x_embedder.proj.bias")},
        "t_embedder_mlp_0": linear("t_embedder.mlp.0"), "t_embedder_mlp_2": linear("t_embedder.mlp.2"),
        "y_embedder": {"embedding": take("y_embedder.embedding_table.weight")},
        "final_layer_adaLN_modulation": linear("final_layer.adaLN_modulation.1"),
        "final_layer_linear": linear("final_layer.linear"),
    }
    for i in range(depth):
        params[f"blocks_{i}"] = {name: linear(f"blocks.{i}.{key}") for name, key in [
            ("adaLN_modulation", "adaLN_modulation.1"), ("attn_qkv", "attn.qkv"), ("attn_proj", "attn.proj"),
            ("mlp_fc1", "mlp.fc1"), ("mlp_fc2", "mlp.fc2")]}
    assert used == set(sd), set(sd) - used  # one to one
    return params


@pytest.mark.compat
@pytest.mark.parametrize("layout", ["p2_sigma", "p4"])
def test_matches_official_dit(layout):
    fixture = np.load(FIXTURE)
    config = json.loads(str(fixture[f"{layout}:config"]))
    sd = {k.split("/", 1)[1]: fixture[k] for k in fixture.files if k.startswith(f"{layout}/")}
    model = DiT(patch_size=config["patch_size"], hidden_size=config["hidden_size"], depth=config["depth"],
                num_heads=config["num_heads"], mlp_ratio=config["mlp_ratio"], out_ch=config["in_channels"],
                num_classes=config["num_classes"], learn_sigma=config["learn_sigma"])
    size, channels = config["input_size"], config["in_channels"]
    params = jax.tree.map(jnp.asarray, official_to_params(sd, config["depth"]))
    shapes = jax.eval_shape(lambda: init_denoiser(model, jax.random.key(0), (size, size, channels)))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)
    grid = size // config["patch_size"]
    np.testing.assert_allclose(sincos_pos_embed_2d(config["hidden_size"], grid), sd["pos_embed"][0], atol=1e-7)

    x = fixture[f"{layout}:x"].transpose(0, 2, 3, 1)
    got = jax.jit(denoiser_apply(model))(params, jnp.asarray(x), jnp.asarray(fixture[f"{layout}:t"]),
                                         jnp.asarray(fixture[f"{layout}:y"]))
    want = fixture[f"{layout}:out"].transpose(0, 2, 3, 1)[..., :channels]  # learn_sigma: the epsilon half
    assert want.std() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * want.std() / 0.1)


# ----------------------------------------------------------------------- dtype, remat, bad sizes


def test_bfloat16_compute_and_remat(small_params):
    x = jax.random.normal(jax.random.key(0), (2, *SMALL_SHAPE))
    t, y = jnp.array([10, 800]), jnp.array([1, 10])
    params = perturb(small_params, jax.random.key(2))

    @jax.jit
    def run(params):
        def loss_and_grad(model):
            return jax.value_and_grad(lambda p: jnp.mean(denoiser_apply(model)(p, x, t, y) ** 2))(params)

        full = denoiser_apply(DiT(**SMALL))(params, x, t, y)
        half = denoiser_apply(DiT(**SMALL, dtype=jnp.bfloat16))(params, x, t, y)
        return loss_and_grad(DiT(**SMALL)), loss_and_grad(DiT(**SMALL, remat=True)), full, half

    (loss, grad), (loss_remat, grad_remat), full, half = run(params)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_remat, grad)
    assert half.dtype == jnp.float32 and np.all(np.isfinite(half))
    assert float(jnp.max(jnp.abs(half - full))) < 0.05 * float(jnp.max(jnp.abs(full)))
    assert not np.array_equal(half, full)  # it did compute in bfloat16
    # Every Linear and the patch convolution multiply in bfloat16 (XLA's attention may keep its logits
    # in float32: at most one float32 product a block).
    jaxpr = str(jax.make_jaxpr(denoiser_apply(DiT(**SMALL, dtype=jnp.bfloat16)))(params, x, t, y))
    products = re.findall(r":(\w+)\[[^\]]*\] = (?:dot_general|conv_general_dilated)", jaxpr)
    depth = SMALL["depth"]
    assert products.count("bf16") >= 1 + 2 + 5 * depth + 2 and products.count("f32") <= depth, products

    def rematerialised_blocks(model):  # the blocks nn.remat wrapped (jax.checkpoint shows as remat2)
        grad = jax.grad(lambda p: jnp.sum(denoiser_apply(model)(p, x, t, y)))
        return len(re.findall(r"= (?:remat\w*|checkpoint)\[", str(jax.make_jaxpr(grad)(params))))

    assert rematerialised_blocks(DiT(**SMALL, remat=True)) == depth
    assert rematerialised_blocks(DiT(**SMALL)) == 0


@pytest.mark.parametrize("hw,patch,shown", [((9, 8), 2, "9x8"), ((12, 10), 4, "12x10"), ((4, 4), 8, "4x4")])
def test_bad_image_size_is_a_one_line_error(hw, patch, shown):
    message = f"image size {shown} is not a multiple of patch_size={patch}"
    with pytest.raises(ValueError, match=message) as info:
        DiT(patch_size=patch, **TINY).init({"params": jax.random.key(0)}, jnp.zeros((1, *hw, 1)),
                                           jnp.zeros((1,), jnp.int32))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="image size 30 is not a multiple of patch_size=4"):
        check_image_size(30, 4)
    check_image_size(32, 4)
    check_image_size((16, 24), 8)


def test_bad_head_count_is_an_error():
    with pytest.raises(ValueError, match="num_heads=5 does not divide hidden_size=16"):
        DiT(patch_size=2, hidden_size=16, depth=1, num_heads=5).init(
            {"params": jax.random.key(0)}, jnp.zeros((1, 4, 4, 1)), jnp.zeros((1,), jnp.int32))


# ---------------------------------------------------------------------------------------- training


def test_tiny_dit_trains_on_digits(small_params):
    source = data.load_digits()
    images = source.images.astype(np.float32) / 127.5 - 1.0  # [N, 8, 8, 1] in [-1, 1]
    model = DiT(**SMALL)
    family = families.ddpm(make_tables(make_betas("linear", 1000)))
    optimizer = make_optimizer(learning_rate_schedule(2e-3, warmup_steps=5), grad_clip_norm=1.0)
    state = init_train_state(small_params, optimizer)
    step = jax.jit(make_train_step(denoiser_apply(model), family, optimizer, ema_decay_rate=0.99,
                                   num_classes=10, label_dropout=0.1))
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(40):
        idx = rng.choice(len(images), 32)
        state, metrics = step(state, {"image": images[idx], "label": source.labels[idx]})
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    # At init the network outputs zero, so the eps loss starts at E[eps^2] = 1.
    assert abs(np.mean(losses[:3]) - 1.0) < 0.1, losses
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
