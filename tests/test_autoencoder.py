"""The KL autoencoder (diffusers' AutoencoderKL in jaxdiff): shapes for every downsampling factor, output
for output parity with diffusers on a committed fixture (tests/fixtures/diffusers/make_autoencoder_fixture.py),
export back to the same files, the posterior's KL and samples and the PSNR against float64 closed forms,
the loss, bad folders as one-line errors, a tiny autoencoder trained on digits, and a live test against
diffusers itself where torch and diffusers are installed."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.data import load_digits, preprocess
from jaxdiff.interop import diffusers_autoencoder
from jaxdiff.interop.diffusers_unet import TORCH_WEIGHTS_NAME, WEIGHTS_NAME
from jaxdiff.interop.safetensors_file import WeightsError
from jaxdiff.models.autoencoder import (AutoencoderKL, autoencoder_apply, init_autoencoder, kl_divergence, psnr,
                                        sample_posterior)
from jaxdiff.models.unet import count_params
from jaxdiff.training.autoencoder_step import autoencoder_loss, make_autoencoder_train_step
from jaxdiff.training.keys import step_keys
from jaxdiff.training.optim import make_optimizer
from jaxdiff.training.state import init_train_state
from tests.conftest import ROOT

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "diffusers", "autoencoder")
# float32 parity: the largest error relative to the largest output (measured: ~2e-6 on the fixture)
PARITY_RTOL = 1e-5


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def max_relative_error(ours, theirs):
    """``max |ours - theirs| / max |theirs|``, ours NHWC and theirs NCHW."""
    return float(np.abs(np.asarray(ours).transpose(0, 3, 1, 2) - theirs).max() / np.abs(theirs).max())


def outputs(model):
    """A jitted ``(params, x, z) -> {"mean", "logvar", "decode", "forward"}``: the posterior of ``x``,
    ``decode(z)`` and the reconstruction of ``x`` from the posterior mean (one program, one compile)."""

    def run(params, x, z):
        mean, logvar = model.apply({"params": params}, x, method="encode")
        return {"mean": mean, "logvar": logvar, "decode": model.apply({"params": params}, z, method="decode"),
                "forward": autoencoder_apply(model)(params, x)[0]}

    return jax.jit(run)


def diffusers_outputs(model, x, z):
    """The same four outputs of a diffusers ``AutoencoderKL`` (NCHW NumPy)."""
    posterior = model.encode(x).latent_dist
    return {"mean": posterior.mean.numpy(), "logvar": posterior.logvar.numpy(),
            "decode": model.decode(z).sample.numpy(), "forward": model(x, sample_posterior=False).sample.numpy()}


def random_params(model, seed):
    """Parameters of ``model`` with nothing at its initial value (as the fixture script's ``randomise``):
    kernels ~ N(0, 1 / fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2); NumPy, nothing compiled."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "kernel":
            return noise / np.sqrt(np.prod(leaf.shape[:-1]))
        return 1 + 0.1 * noise if name == "scale" else 0.1 * noise

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(lambda: init_autoencoder(model, jax.random.key(0))))


def parity_errors(ours, theirs):
    return {k: max_relative_error(ours[k], theirs[k]) for k in theirs}


@pytest.fixture(scope="module")
def loaded():
    return diffusers_autoencoder.read_folder(FIXTURE), np.load(os.path.join(FIXTURE, "reference.npz"))


# ---------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_shapes_for_each_downsampling_factor(levels):
    f = 2 ** (levels - 1)
    model = AutoencoderKL(in_channels=2, out_channels=1, block_out_channels=(4, 8, 8, 8)[:levels], layers_per_block=1,
                          latent_channels=3, norm_num_groups=2)
    assert model.downsampling_factor == f

    def shapes(x, key):
        params = init_autoencoder(model, key)
        mean, logvar = model.apply({"params": params}, x, method="encode")
        return params, mean, logvar, model.apply({"params": params}, mean, method="decode")

    params, mean, logvar, decoded = jax.eval_shape(shapes, jax.ShapeDtypeStruct((2, 16, 24, 2), jnp.float32),
                                                   jax.random.key(0))
    assert mean.shape == logvar.shape == (2, 16 // f, 24 // f, 3) and mean.dtype == jnp.float32
    assert decoded.shape == (2, 16, 24, 1)
    assert params["quant_conv"]["kernel"].shape == (1, 1, 6, 6) and params["decoder"]["conv_in"]["kernel"].shape == (
        3, 3, 3, (4, 8, 8, 8)[levels - 1])
    bad_size, bad_channels = jnp.zeros((1, f + 1, f, 2)), jnp.zeros((1, f, f, 3))
    if f > 1:
        with pytest.raises(ValueError, match=f"multiples of f={f}"):
            jax.eval_shape(lambda p: model.apply({"params": p}, bad_size), params)
    with pytest.raises(ValueError, match="in_channels=2"):
        jax.eval_shape(lambda p: model.apply({"params": p}, bad_channels), params)


def test_the_defaults_are_stable_diffusions_autoencoder():
    """kl-f8: 83,653,863 parameters (as diffusers' AutoencoderKL of SD's config.json counts them)."""
    model = AutoencoderKL()
    assert model.downsampling_factor == 8
    assert count_params(jax.eval_shape(lambda: init_autoencoder(model, jax.random.key(0)))) == 83_653_863


# ---------------------------------------------------------------------------------------- parity


@pytest.mark.compat
def test_outputs_match_diffusers(loaded):
    model, ref = loaded
    assert model.sample_size == 16 and model.scaling_factor == 0.18215
    assert model.autoencoder == AutoencoderKL(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4)
    ours = outputs(model.autoencoder)(model.params, nhwc(ref["x"]), nhwc(ref["z"]))
    errors = parity_errors(ours, {"mean": ref["mean"], "logvar": ref["logvar"], "decode": ref["decoded"],
                                  "forward": ref["forward"]})
    assert max(errors.values()) < PARITY_RTOL, errors
    np.testing.assert_allclose(kl_divergence(ours["mean"], ours["logvar"]), ref["kl"], rtol=1e-5)


def test_the_log_variance_is_clipped_as_diffusers_clips_it(loaded):
    model, ref = loaded
    encode = jax.jit(lambda p, x: model.autoencoder.apply({"params": p}, x, method="encode"))
    for bias, clipped in ((100.0, 20.0), (-100.0, -30.0)):
        params = jax.tree.map(lambda a: a, model.params)
        params["quant_conv"] = {**params["quant_conv"], "bias": np.concatenate([np.zeros(4), np.full(4, bias)])}
        _, logvar = encode(params, nhwc(ref["x"]))
        np.testing.assert_array_equal(logvar, clipped)


def test_old_hub_attention_names_and_pipeline_folders_load_the_same_weights(loaded, tmp_path):
    model, _ = loaded
    weights = load_file(os.path.join(FIXTURE, WEIGHTS_NAME))
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in weights.items():
        for new, old in legacy.items():
            key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in renamed
    (tmp_path / "vae").mkdir()
    save_file(renamed, str(tmp_path / "vae" / WEIGHTS_NAME))
    shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path / "vae" / "config.json")
    old = diffusers_autoencoder.read_folder(tmp_path)  # a pipeline folder: vae/
    assert old.autoencoder == model.autoencoder
    jax.tree.map(np.testing.assert_array_equal, old.params, model.params)


# ---------------------------------------------------------------------------------------- export


def test_export_writes_back_what_diffusers_wrote(loaded, tmp_path):
    model, _ = loaded
    diffusers_autoencoder.write_folder(tmp_path, model.autoencoder, model.params, model.sample_size,
                                       model.scaling_factor)
    theirs, ours = load_file(os.path.join(FIXTURE, WEIGHTS_NAME)), load_file(str(tmp_path / WEIGHTS_NAME))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    with open(os.path.join(FIXTURE, "config.json")) as f:
        want = json.load(f)
    got = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in got.items() if k != "_diffusers_version"} == {
        k: v for k, v in want.items() if k != "_diffusers_version"}


def test_a_jaxdiff_autoencoder_exports_under_diffusers_names():
    model = AutoencoderKL(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4)
    shapes = jax.eval_shape(lambda: init_autoencoder(model, jax.random.key(0)))
    ours = diffusers_autoencoder.state_dict_from_params(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes),
                                                        3)
    theirs = load_file(os.path.join(FIXTURE, WEIGHTS_NAME))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_what_diffusers_cannot_express_is_refused_before_writing(tmp_path):
    with pytest.raises(WeightsError, match="num_heads=2"):
        diffusers_autoencoder.write_folder(tmp_path / "out", AutoencoderKL(num_heads=2), {}, 256)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- posterior, KL and PSNR


def test_kl_and_posterior_samples_match_float64_closed_forms():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    mu = np.asarray(jax.random.normal(k1, (3, 4, 4, 2)), np.float64)
    logvar = np.asarray(2 * jax.random.normal(k2, (3, 4, 4, 2)), np.float64)
    sigma = np.exp(logvar / 2)
    # KL(N(mu, sigma^2) || N(0, 1)) = log(1 / sigma) + (sigma^2 + mu^2) / 2 - 1 / 2, summed per example
    want = np.sum(np.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5, axis=(1, 2, 3))
    np.testing.assert_allclose(kl_divergence(jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32)), want,
                               rtol=1e-5)
    assert float(kl_divergence(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)))[0]) == 0.0  # the prior itself
    z = sample_posterior(jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32), k3)
    eps = np.asarray(jax.random.normal(k3, mu.shape), np.float64)
    np.testing.assert_allclose(z, mu + sigma * eps, rtol=1e-5, atol=1e-6)
    # and as a distribution: 4096 draws of one latent have its mean and standard deviation
    draws = jax.jit(jax.vmap(lambda k: sample_posterior(jnp.asarray(mu[:1], jnp.float32),
                                                        jnp.asarray(logvar[:1], jnp.float32), k)))(
        jax.random.split(k3, 4096))
    draws = np.asarray(draws, np.float64)
    assert np.all(np.abs(draws.mean(0) - mu[:1]) < 5 * sigma[:1] / 64)
    assert np.all(np.abs(draws.std(0) / sigma[:1] - 1) < 5 / math.sqrt(2 * 4096))


def test_psnr_formula():
    x = jnp.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    y = x + jnp.asarray([0.1, 0.01])[:, None, None, None]
    np.testing.assert_allclose(psnr(y, x, 2.0), [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 1e-4)], rtol=1e-4)
    np.testing.assert_allclose(psnr(y, x, 1.0), [20.0, 40.0], rtol=1e-4)
    assert float(psnr(x, x)[0]) == math.inf


def test_loss_is_the_reconstruction_plus_the_weighted_kl_per_value():
    keys = jax.random.split(jax.random.key(1), 4)
    x, recon = (jax.random.uniform(k, (2, 8, 8, 3), minval=-1, maxval=1) for k in keys[:2])
    mean, logvar = (jax.random.normal(k, (2, 4, 4, 2)) for k in keys[2:])
    kl = np.asarray(kl_divergence(mean, logvar)).mean()
    d = np.asarray(recon, np.float64) - np.asarray(x, np.float64)
    for kind, rec in (("l1", np.abs(d).mean()), ("l2", (d ** 2).mean())):
        loss, metrics = autoencoder_loss(recon, x, mean, logvar, 1e-2, kind)
        np.testing.assert_allclose(loss, rec + 1e-2 * kl / (8 * 8 * 3), rtol=1e-5)
        np.testing.assert_allclose([metrics["recon"], metrics["kl"]], [rec, kl], rtol=1e-5)
        np.testing.assert_allclose(metrics["psnr"], np.mean(psnr(jnp.clip(recon, -1, 1), x)), rtol=1e-6)
    with pytest.raises(ValueError, match="reconstruction must be one of l1, l2"):
        autoencoder_loss(recon, x, mean, logvar, 1e-6, "lpips")


# ------------------------------------------------------------------------------------ bad inputs


def _edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_weights(folder, edit):
    weights = load_file(str(folder / WEIGHTS_NAME))
    edit(weights)
    save_file(weights, str(folder / WEIGHTS_NAME))


BAD_FOLDERS = {
    "block type": (lambda f: _edit_config(f, down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                                                               "DownEncoderBlock2D"]),
                   "down_block_types[1]='AttnDownEncoderBlock2D' is not supported"),
    "block count": (lambda f: _edit_config(f, up_block_types=["UpDecoderBlock2D"]), "up_block_types"),
    "shift factor": (lambda f: _edit_config(f, shift_factor=0.1159), "shift_factor=0.1159"),
    "latents mean": (lambda f: _edit_config(f, latents_mean=[0.0] * 4), "latents_mean=[0.0, 0.0, 0.0, 0.0]"),
    "activation": (lambda f: _edit_config(f, act_fn="gelu"), "act_fn='gelu'"),
    "groups": (lambda f: _edit_config(f, norm_num_groups=3), "norm_num_groups=3"),
    "unknown field": (lambda f: _edit_config(f, cross_attention_dim=768), "unknown AutoencoderKL field"),
    "other class": (lambda f: _edit_config(f, _class_name="VQModel"), "_class_name='VQModel'"),
    "no mid attention": (lambda f: _edit_config(f, mid_block_add_attention=False),
                         "weight(s) the network of its config.json lacks, e.g. decoder.mid_block.attentions.0"),
    "no quant conv": (lambda f: _edit_config(f, use_quant_conv=False), "e.g. quant_conv.bias"),
    "missing key": (lambda f: _edit_weights(f, lambda w: w.pop("encoder.mid_block.attentions.0.to_k.weight")),
                    "lacks encoder.mid_block.attentions.0.to_k.weight"),
    "wrong shape": (lambda f: _edit_weights(f, lambda w: w.update({"post_quant_conv.weight": np.zeros((4, 4, 3, 3),
                                                                                                     np.float32)})),
                    "post_quant_conv.weight has shape (4, 4, 3, 3), the network of its config.json needs (4, 4, 1, 1)"),
    "no weights": (lambda f: (f / WEIGHTS_NAME).unlink(), f"has neither {WEIGHTS_NAME} nor {TORCH_WEIGHTS_NAME}"),
    "truncated": (lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:50_000]), "cannot read"),
    "no config": (lambda f: (f / "config.json").unlink(), "is not a diffusers model folder"),
}


@pytest.mark.parametrize("problem", sorted(BAD_FOLDERS))
def test_bad_folders_are_one_line_errors(problem, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(FIXTURE, folder)
    break_it, message = BAD_FOLDERS[problem]
    break_it(folder)
    with pytest.raises(WeightsError) as e:
        diffusers_autoencoder.read_folder(folder)
    assert "\n" not in str(e.value) and message in str(e.value), str(e.value)


def test_irrelevant_and_switchable_fields_are_read():
    config = json.loads(open(os.path.join(FIXTURE, "config.json")).read())
    model, size, scaling = diffusers_autoencoder.autoencoder_from_diffusers_config(
        {**config, "force_upcast": False, "use_post_quant_conv": False, "mid_block_add_attention": False,
         "sample_size": [32, 32], "scaling_factor": 0.13025})
    assert (size, scaling, model.use_post_quant_conv, model.mid_block_add_attention) == (32, 0.13025, False, False)
    sd = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "sample_size": 512}  # Stable Diffusion 1.x's vae/config.json (less its defaults)
    assert diffusers_autoencoder.autoencoder_from_diffusers_config(sd) == (AutoencoderKL(), 512, 0.18215)


# -------------------------------------------------------------------------------------- training


def test_training_on_digits_lowers_the_reconstruction_error():
    """30 steps of the KL autoencoder (f = 2: 8x8 digits <-> 4x4x2 latents): the training loss's
    reconstruction term and the held-out error of the posterior mean both fall by half."""
    source = load_digits(8)
    model = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                          latent_channels=2, norm_num_groups=4, mid_block_add_attention=False)  # compiles faster
    optimizer = make_optimizer(3e-3, grad_clip_norm=1.0)
    state = init_train_state(jax.jit(lambda k: init_autoencoder(model, k, (8, 8, 1)))(jax.random.key(0)), optimizer)
    step = jax.jit(make_autoencoder_train_step(model, optimizer, kl_weight=1e-6, ema_decay_rate=0.9, seed=0))
    held_out = preprocess(jnp.asarray(source.images[-256:]), None)
    forward = jax.jit(lambda p: autoencoder_apply(model)(p, held_out)[0])
    error = lambda p: float(jnp.mean(jnp.abs(forward(p) - held_out)))  # noqa: E731
    before = error(state.params)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(30):
        state, metrics = step(state, {"image": source.images[rng.choice(1500, 32, replace=False)]})
        history.append(jax.device_get(metrics))
    assert set(history[0]) == {"loss", "recon", "kl", "psnr", "grad_norm"} and int(state.step) == 30
    recon = [float(m["recon"]) for m in history]
    assert np.mean(recon[-5:]) < 0.5 * recon[0], recon
    assert error(state.params) < 0.5 * before and error(state.ema_params) < 0.6 * before
    assert float(history[-1]["psnr"]) > float(history[0]["psnr"]) + 5
    # the step is a pure function of (state, batch): the same inputs, the same update
    batch = {"image": source.images[:32]}
    again = [jax.tree.leaves(step(state, batch)[0].params) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*again))


def test_the_train_step_takes_an_apply_function_and_refuses_unknown_losses():
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        make_autoencoder_train_step(AutoencoderKL(), optax.adam(1e-3), reconstruction="huber")

    def apply_fn(params, x, key):  # recon = w x; the posterior mean is one draw from the step's key
        mean = jnp.full((x.shape[0], 1, 1, 1), jax.random.normal(key, ()))
        return x * params["w"], mean, jnp.zeros_like(mean)

    optimizer = optax.sgd(0.1)
    step = jax.jit(make_autoencoder_train_step(apply_fn, optimizer, reconstruction="l2", ema_decay_rate=0.0, seed=7))
    state = init_train_state({"w": jnp.asarray(0.0)}, optimizer)
    state, metrics = step(state, {"image": np.full((2, 2, 2, 1), 255, np.uint8)})
    # loss (w - 1)^2 at w = 0: gradient -2, so w = 0.2 after one SGD step; the EMA with decay 0 follows it
    assert float(metrics["recon"]) == pytest.approx(1.0) and float(state.params["w"]) == pytest.approx(0.2)
    assert float(state.ema_params["w"]) == pytest.approx(0.2)
    # the posterior's key is step_keys(seed, step)["loss"]: KL = mean^2 / 2
    draw = float(jax.random.normal(step_keys(7, 0)["loss"], ()))
    assert float(metrics["kl"]) == pytest.approx(draw ** 2 / 2, rel=1e-5)


# ------------------------------------------------------------------------- live, against diffusers


def test_live_parity_both_directions(tmp_path):
    """A random diffusers AutoencoderKL (no mid attention, no post-quant conv, f = 2, saved as
    safetensors and as a torch .bin) loads into jaxdiff, and a random jaxdiff one (mid attention, both
    1x1 convs) exported loads in AutoencoderKL.from_pretrained, output for output."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("tests.torch_imports").import_torchvision()
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(in_channels=2, out_channels=1, block_out_channels=(4, 8), layers_per_block=2,
                                     down_block_types=("DownEncoderBlock2D",) * 2,
                                     up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, norm_num_groups=2,
                                     mid_block_add_attention=False, use_post_quant_conv=False,
                                     sample_size=8, scaling_factor=0.5).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    shutil.copytree(tmp_path / "theirs", tmp_path / "bin")
    (tmp_path / "bin" / WEIGHTS_NAME).unlink()
    torch.save(theirs.state_dict(), tmp_path / "bin" / TORCH_WEIGHTS_NAME)
    x, z = 2 * torch.rand(2, 2, 8, 8) - 1, torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        want = diffusers_outputs(theirs, x, z)
    loaded, from_bin = (diffusers_autoencoder.read_folder(tmp_path / folder) for folder in ("theirs", "bin"))
    assert (loaded.sample_size, loaded.scaling_factor) == (8, 0.5) and from_bin.autoencoder == loaded.autoencoder
    assert not loaded.autoencoder.mid_block_add_attention and not loaded.autoencoder.use_post_quant_conv
    jax.tree.map(np.testing.assert_array_equal, from_bin.params, loaded.params)
    errors = parity_errors(outputs(loaded.autoencoder)(loaded.params, nhwc(x.numpy()), nhwc(z.numpy())), want)
    assert max(errors.values()) < PARITY_RTOL, errors

    ours = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4)
    params = random_params(ours, seed=1)
    diffusers_autoencoder.write_folder(tmp_path / "ours", ours, params, 16, 0.25)
    exported = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours").eval()
    assert exported.config.scaling_factor == 0.25
    assert sum(p.numel() for p in exported.parameters()) == count_params(params)
    x, z = 2 * torch.rand(2, 3, 16, 16) - 1, torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want = diffusers_outputs(exported, x, z)
    errors = parity_errors(outputs(ours)(params, nhwc(x.numpy()), nhwc(z.numpy())), want)
    assert max(errors.values()) < PARITY_RTOL, errors
