"""diffusers interop: UNet2DModel folders load into jaxdiff output for output (fixtures made with torch +
diffusers by tests/fixtures/diffusers/make_fixtures.py and committed), export back to the same files,
scheduler configs map to the same tables, bad files are one-line errors; the padding fix of the DDPM
network; model.init_from and --mode=export through the drivers. A live test against diffusers itself
runs where torch and diffusers are installed."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.core import ddpm_chain, families, schedules
from jaxdiff.core.spacing import spaced_timesteps

from jaxdiff.core.sampler import run_sampler
from jaxdiff.drivers import config_checks, export_mode, model_source, sample_mode, train_loop, trained_model
from jaxdiff.drivers.diffusion_config import resolve_target
from jaxdiff.interop import __main__ as interop_cli
from jaxdiff.interop import diffusers_scheduler, diffusers_unet, process_file, safetensors_file
from jaxdiff.interop.safetensors_file import WeightsError
from jaxdiff.models import layers
from jaxdiff.models.denoiser import denoiser_apply, init_denoiser
from jaxdiff.models.unet import UNet, downsample_pads
from tests.conftest import ROOT, tiny_config

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "diffusers")
LAYOUTS = ("ddpm", "general")
# float32 parity: the relative error of the largest output, as diffusers' own CPU-vs-CPU tests allow
PARITY_RTOL = 3e-5


def fixture(name):
    return os.path.join(FIXTURES, name)


def reference(name):
    return np.load(os.path.join(fixture(name), "reference.npz"))


def nhwc(a):
    return jnp.asarray(a.transpose(0, 2, 3, 1))


def max_relative_error(ours, theirs):
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# ------------------------------------------------------------------------------ loading, parity


@pytest.mark.compat
@pytest.mark.parametrize("name", LAYOUTS)
def test_outputs_match_diffusers(name):
    model = diffusers_unet.read_folder(fixture(name))
    ref = reference(name)
    apply = jax.jit(denoiser_apply(model.unet))
    labels = jnp.asarray(ref["labels"]) if "labels" in ref else None
    for kind in ("int", "float"):  # integer DDPM timesteps, and the fractional times of other samplers
        out = np.asarray(apply(model.params, nhwc(ref["x"]), jnp.asarray(ref[f"t_{kind}"]), labels))
        assert max_relative_error(out.transpose(0, 3, 1, 2), ref[f"out_{kind}"]) < PARITY_RTOL, kind


def test_layouts_map_onto_the_fields_they_name():
    ddpm, general = (diffusers_unet.read_folder(fixture(n)).unet for n in LAYOUTS)
    assert (ddpm.ch, ddpm.ch_mult, ddpm.num_res_blocks, ddpm.attn_resolutions) == (16, (1, 2), 2, (8,))
    assert (ddpm.downsample_padding, ddpm.flip_sin_to_cos, ddpm.freq_shift, ddpm.head_dim) == ("same", False, 1.0, 0)
    assert (ddpm.norm_eps, ddpm.groups, ddpm.num_classes) == (1e-6, 4, 0)
    assert general.ch_mult == (1, 2, 2) and general.attn_resolutions == (16, 4)
    assert (general.downsample_padding, general.flip_sin_to_cos, general.freq_shift) == ("symmetric", True, 0.0)
    assert (general.head_dim, general.norm_eps, general.num_classes, general.dropout) == (4, 1e-5, 10, 0.1)


def test_the_padding_is_what_makes_the_ddpm_layout_match():
    """The same weights with jaxdiff < 0.4's symmetric padding are a different function."""
    model = diffusers_unet.read_folder(fixture("ddpm"))
    ref = reference("ddpm")
    out = denoiser_apply(model.unet.clone(downsample_padding="symmetric"))(model.params, nhwc(ref["x"]),
                                                                           jnp.asarray(ref["t_int"]))
    assert max_relative_error(np.asarray(out).transpose(0, 3, 1, 2), ref["out_int"]) > 0.05


def test_same_padding_is_tensorflow_same_on_even_sizes():
    """TF SAME for a stride-2 3x3 conv on an even size pads 0 before and 1 after (diffusers' F.pad(0, 1, 0, 1))."""
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 3))
    conv = lambda pads: jax.lax.conv_general_dilated(x, w, (2, 2), pads,  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv(downsample_pads("same")), conv(((0, 1), (0, 1))), rtol=1e-6)
    assert not np.allclose(conv(downsample_pads("symmetric")), conv(((0, 1), (0, 1))))
    assert layers.Conv(3, (3, 3), strides=(2, 2), padding=downsample_pads("same")).padding == "SAME"


def test_a_torch_bin_state_dict_loads_the_same_weights(tmp_path):
    """Older hub folders have only diffusion_pytorch_model.bin (torch.save): read without torch."""
    folder = _copy("general", tmp_path)
    (folder / diffusers_unet.WEIGHTS_NAME).unlink()
    from_bin, from_safetensors = diffusers_unet.read_folder(folder), diffusers_unet.read_folder(fixture("general"))
    jax.tree.map(np.testing.assert_array_equal, from_bin.params, from_safetensors.params)


def test_old_hub_attention_names_load_the_same_weights(tmp_path):
    """Checkpoints of diffusers 0.0.x name attention query / key / value / proj_attn and their
    config.json has 0.0.4's fields only (the rest take diffusers' defaults)."""
    weights = load_file(os.path.join(fixture("ddpm"), diffusers_unet.WEIGHTS_NAME))
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in weights.items():
        for new, legacy in old.items():
            key = key.replace(f".{new}.", f".{legacy}.")
        renamed[key] = value
    assert any(".proj_attn." in k for k in renamed)
    save_file(renamed, str(tmp_path / diffusers_unet.WEIGHTS_NAME))
    with open(os.path.join(fixture("ddpm"), "config.json")) as f:
        config = json.load(f)
    keep = ("act_fn", "attention_head_dim", "block_out_channels", "center_input_sample", "down_block_types",
            "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels", "layers_per_block",
            "mid_block_scale_factor", "norm_eps", "norm_num_groups", "out_channels", "sample_size",
            "time_embedding_type", "up_block_types")
    (tmp_path / "config.json").write_text(json.dumps({"_diffusers_version": "0.0.4", **{k: config[k] for k in keep}}))
    old_model, model = diffusers_unet.read_folder(tmp_path), diffusers_unet.read_folder(fixture("ddpm"))
    assert old_model.unet == model.unet
    jax.tree.map(np.testing.assert_array_equal, old_model.params, model.params)


# ----------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", LAYOUTS)
def test_export_writes_back_what_diffusers_wrote(name, tmp_path):
    """Load then export: the same tensors under the same names, and a config.json whose every field
    diffusers wrote has the same value, so diffusers builds the same network from it."""
    model = diffusers_unet.read_folder(fixture(name))
    diffusers_unet.write_folder(tmp_path, model.unet, model.params, model.image_size, model.scheduler)
    theirs = load_file(os.path.join(fixture(name), diffusers_unet.WEIGHTS_NAME))
    ours = load_file(str(tmp_path / "unet" / diffusers_unet.WEIGHTS_NAME))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    with open(os.path.join(fixture(name), "config.json")) as f:
        want = json.load(f)
    got = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert {k: v for k, v in got.items() if k != "_diffusers_version"} == {
        k: v for k, v in want.items() if k != "_diffusers_version"}
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert diffusers_unet.read_folder(tmp_path).unet == model.unet  # a pipeline folder reads back


def test_a_jaxdiff_network_exports_under_diffusers_names():
    """A fresh jaxdiff U-Net of the ddpm fixture's architecture has exactly diffusers' keys and shapes."""
    unet = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.0, groups=4)
    params = jax.eval_shape(lambda: init_denoiser(unet, jax.random.key(0), (16, 16, 3)))
    ours = diffusers_unet.state_dict_from_params(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), params), 2)
    theirs = load_file(os.path.join(fixture("ddpm"), diffusers_unet.WEIGHTS_NAME))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_what_diffusers_cannot_express_is_refused_before_writing(tmp_path):
    unet = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), groups=32)  # 32 > 16 channels
    with pytest.raises(WeightsError, match="model.groups=32 does not divide"):
        diffusers_unet.write_folder(tmp_path / "out", unet, {}, 16)
    unet = UNet(ch=16, ch_mult=(1, 3), num_res_blocks=1, attn_resolutions=(16, 8), num_heads=4, groups=4)
    with pytest.raises(WeightsError, match="model.num_heads=4 gives heads of"):
        diffusers_unet.config_from_unet(unet, 16)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- scheduler


def test_scheduler_tables_match_diffusers():
    ref = reference("ddpm")
    for theirs, ours in (("linear", "linear"), ("squaredcos_cap_v2", "cosine"), ("sigmoid", "sigmoid_geodiff")):
        diffusion, _ = diffusers_scheduler.diffusion_settings({"_class_name": "DDPMScheduler", "beta_schedule": theirs})
        assert diffusion["schedule"] == ours
        tables = schedules.make_tables(schedules.make_betas(ours, 1000, diffusion["beta_start"], diffusion["beta_end"]))
        np.testing.assert_allclose(tables.alphas_cumprod, ref[f"alphas_cumprod_{theirs}"], rtol=2e-5, atol=1e-7)


def test_scheduler_config_round_trip():
    with open(os.path.join(fixture("ddpm"), "scheduler_config.json")) as f:
        theirs = json.load(f)
    diffusion, sampling = diffusers_scheduler.diffusion_settings(theirs)
    assert diffusion == {"family": "ddpm", "num_timesteps": 1000, "schedule": "linear", "beta_start": 1e-4,
                         "beta_end": 0.02, "scale_betas_to_t": False, "zero_terminal_snr": False, "target": "eps"}
    assert sampling == {"variance": "fixed_large", "clip_x0": True}
    ours = diffusers_scheduler.scheduler_config(diffusion, sampling, "0.42.1")
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "variance_type",
                "clip_sample", "rescale_betas_zero_snr"):
        assert ours[key] == theirs[key], key
    scaled = diffusers_scheduler.scheduler_config({**diffusion, "num_timesteps": 100, "scale_betas_to_t": True},
                                                  sampling, "0.42.1")
    assert scaled["beta_end"] == pytest.approx(0.2)  # improved-diffusion's scaling, as explicit ends


def test_ddim_trajectory_matches_diffusers():
    """Ten deterministic DDIM steps (leading spacing, eta 0, final alpha 1) from the same x_T, the
    loaded network and the scheduler config's tables: the same images as diffusers' DDIMScheduler."""
    model = diffusers_unet.read_folder(fixture("ddpm"))
    ref = reference("ddpm")
    diffusion, _ = diffusers_scheduler.diffusion_settings(model.scheduler)
    tables = schedules.make_tables(schedules.make_betas("linear", 1000, diffusion["beta_start"], diffusion["beta_end"]))
    timesteps = spaced_timesteps(1000, 10, "leading")
    np.testing.assert_array_equal(np.asarray(timesteps), ref["ddim_timesteps"])
    sampler = ddpm_chain.ddim_sampler(tables, timesteps, eta=0.0, clip_x0=False, set_alpha_to_one=True)
    apply = denoiser_apply(model.unet)
    out = run_sampler(sampler, lambda x, t: apply(model.params, x, t), nhwc(ref["ddim_xT"]),
                               jax.random.key(0))
    assert max_relative_error(np.asarray(out.samples).transpose(0, 3, 1, 2), ref["ddim_x0"]) < 1e-4


# ------------------------------------------------------------------------------------ bad inputs


def _copy(name, tmp_path):
    folder = tmp_path / name
    shutil.copytree(fixture(name), folder)
    return folder


def _edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_weights(folder, edit):
    path = str(folder / diffusers_unet.WEIGHTS_NAME)
    weights = load_file(path)
    edit(weights)
    save_file(weights, path)


BAD_FOLDERS = {
    "fourier time": (lambda f: _edit_config(f, time_embedding_type="fourier"), "time_embedding_type='fourier'"),
    "block type": (lambda f: _edit_config(f, down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D"]),
                   "down_block_types[0]='ResnetDownsampleBlock2D'"),
    "asymmetric attention": (lambda f: _edit_config(f, up_block_types=["UpBlock2D", "UpBlock2D"]), "up_block_types"),
    "unknown field": (lambda f: _edit_config(f, cross_attention_dim=768),
                      "unknown UNet2DModel field 'cross_attention_dim'"),
    "learned variance": (lambda f: _edit_config(f, out_channels=6), "out_channels=6"),
    "scale shift": (lambda f: _edit_config(f, resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
    "other class": (lambda f: _edit_config(f, _class_name="UNet2DConditionModel"), "UNet2DConditionModel"),
    "bad json": (lambda f: (f / "config.json").write_text("{not json"), "cannot read"),
    "corrupt weights": (lambda f: (f / diffusers_unet.WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00"
                                                                                b"{garbage header}"),
                        "cannot read"),
    "truncated weights": (lambda f: (f / diffusers_unet.WEIGHTS_NAME).write_bytes(
        (f / diffusers_unet.WEIGHTS_NAME).read_bytes()[:100_000]), "cannot read"),
    "tiny file": (lambda f: (f / diffusers_unet.WEIGHTS_NAME).write_bytes(b"abc"), "truncated"),
    "missing key": (lambda f: _edit_weights(f, lambda w: w.pop("mid_block.attentions.0.to_k.weight")),
                    "lacks mid_block.attentions.0.to_k.weight"),
    "extra key": (lambda f: _edit_weights(f, lambda w: w.update({"extra.weight": np.zeros(2, np.float32)})),
                  "e.g. extra.weight"),
    "wrong shape": (lambda f: _edit_weights(f, lambda w: w.update({"conv_in.weight": np.zeros((16, 3, 1, 1),
                                                                                               np.float32)})),
                    "conv_in.weight has shape (16, 3, 1, 1), the network of its config.json needs (16, 3, 3, 3)"),
    "no weights": (lambda f: (f / diffusers_unet.WEIGHTS_NAME).unlink(), "has neither"),
    "bad .bin": (lambda f: (f / diffusers_unet.WEIGHTS_NAME).rename(f / diffusers_unet.TORCH_WEIGHTS_NAME),
                 "neither a zip archive nor a legacy torch.save file"),
    "no config": (lambda f: (f / "config.json").unlink(), "is not a diffusers model folder"),
}


@pytest.mark.parametrize("problem", sorted(BAD_FOLDERS))
def test_bad_folders_are_one_line_errors(problem, tmp_path):
    folder = _copy("ddpm", tmp_path)
    break_it, message = BAD_FOLDERS[problem]
    break_it(folder)
    with pytest.raises(WeightsError) as e:
        diffusers_unet.read_folder(folder)
    assert "\n" not in str(e.value) and message in str(e.value), str(e.value)


@pytest.mark.parametrize("field,value,message", [
    ("beta_schedule", "scaled_linear", "beta_schedule='scaled_linear'"),
    ("trained_betas", [0.1, 0.2], "trained_betas"),
    ("variance_type", "learned_range", "variance_type='learned_range'"),
    ("prediction_type", "flow", "prediction_type='flow'"),
    ("thresholding", True, "thresholding"),
    ("steps_offset", 1, "steps_offset=1"),
])
def test_bad_scheduler_configs_are_one_line_errors(field, value, message):
    with pytest.raises(WeightsError, match=message.replace("[", r"\[")):
        diffusers_scheduler.diffusion_settings({"_class_name": "DDPMScheduler", field: value})
    with pytest.raises(WeightsError, match="family='vp' has no diffusers scheduler"):
        diffusers_scheduler.scheduler_config({"family": "vp"}, {}, "0.42.1")


def test_inspect_command_prints_the_settings(capsys):
    assert interop_cli.main([fixture("general")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("72,297 parameters, 16x16x1 images, 10 classes + the null label")
    for flag in ("--config.model.head_dim=4", "--config.model.downsample_padding=symmetric",
                 "--config.model.ch_mult=(1,2,2)", "--config.model.attn_resolutions=(16,4)",
                 "--config.diffusion.schedule=linear", "--config.model.class_conditional=True"):
        assert flag in out, flag
    assert interop_cli.main([str(FIXTURES)]) == 2 and "is not a diffusers model folder" in capsys.readouterr().err


def test_missing_weights_file():
    with pytest.raises(WeightsError, match="does not exist"):
        safetensors_file.read("/nonexistent/diffusion_pytorch_model.safetensors")


# ------------------------------------------------------------------ drivers: init_from and export


def general_config(**overrides):
    """digits at 16x16, class-conditional: the data the ``general`` fixture's network fits."""
    return tiny_config(**{"data.image_size": 16, "model.class_conditional": True, "sampling.sampler": "ddim",
                          "sampling.num_steps": 4, "sampling.num_samples": 4, "sampling.trajectory_every": 0,
                          "model.init_from": fixture("general"), **overrides})


def test_sample_mode_uses_the_init_from_network(tmp_path):
    info = sample_mode.run_sample_mode(general_config(), str(tmp_path / "run"))
    assert info["init_from"] == fixture("general") and info["checkpoint_step"] == 0
    images = np.load(tmp_path / "run" / info["files"]["npz"])["images"]
    assert images.shape == (4, 16, 16, 1)


def test_fine_tuning_starts_from_the_diffusers_weights_then_exports(tmp_path):
    """Train from the general fixture (its architecture, process and weights replace the config's),
    resume knows the network without reading the folder again, and --mode=export writes a folder whose
    weights are the checkpoint's EMA."""
    workdir = str(tmp_path / "run")
    config = general_config(**{"training.num_train_steps": 2, "training.checkpoint_every": 2,
                               "training.learning_rate": 1e-7, "training.sample_every": 0})
    state = train_loop.train(config, workdir, progress=False)
    source = diffusers_unet.read_folder(fixture("general"))
    drift = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, source.params)
    assert max(jax.tree.leaves(drift)) < 1e-4  # two tiny steps away from the diffusers weights
    latest = model_source.latest_checkpoint(workdir)
    recorded = latest.meta["config"]["model"]
    latest.manager.close()
    assert (recorded["head_dim"], recorded["flip_sin_to_cos"], recorded["downsample_padding"]) == (4, True, "symmetric")
    out = export_mode.run_export(config, workdir, log=lambda *_: None)
    exported = diffusers_unet.read_folder(out)
    assert exported.unet == source.unet.clone(dropout=config.model.dropout)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.ema_params, exported.params)
    # the exported scheduler and jaxdiff.json are the process trained (the fixture's linear DDPM schedule)
    assert json.loads(open(os.path.join(out, "scheduler", "scheduler_config.json")).read())["beta_schedule"] == "linear"
    assert (exported.process["family"], exported.process["schedule"], exported.process["target"]) == (
        "ddpm", "linear", "eps")
    # resuming (here: already complete) rebuilds the same network from the checkpoint
    train_loop.train(config, workdir, progress=False)
    # and another run can start from this work directory
    opened = trained_model.open_trained(general_config(**{"model.init_from": workdir}), str(tmp_path / "next"), "sample",
                                 log=lambda *_: None)
    assert opened.source.kind == "workdir" and opened.experiment.model == exported.unet.clone(
        dropout=config.model.dropout, dtype=opened.experiment.model.dtype)


def test_checkpoints_keep_the_padding_they_were_trained_with(tmp_path):
    """The v0.1 fixture predates the field: auto is symmetric; a --config flag asking for same is refused."""
    workdir = tmp_path / "run"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "main_v0.1"), workdir)
    config = tiny_config(**{"model.class_conditional": True, "diffusion.num_timesteps": 20})
    opened = trained_model.open_trained(config, str(workdir), "sample")
    assert opened.experiment.model.downsample_padding == "symmetric"
    opened.latest.manager.close()
    # a config file's other padding is replaced by the recorded one; a --config flag's is an error
    lines = []
    opened = trained_model.open_trained(tiny_config(**{"model.class_conditional": True, "diffusion.num_timesteps": 20,
                                                "model.downsample_padding": "same"}), str(workdir), "sample",
                                 log=lines.append)
    assert opened.experiment.model.downsample_padding == "symmetric"
    assert "model.downsample_padding='symmetric' (the config had 'same')" in lines[0]
    opened.latest.manager.close()
    with pytest.raises(config_checks.ConfigError, match="model.downsample_padding='same' but the checkpoint has "
                                                        "model.downsample_padding='symmetric'"):
        trained_model.open_trained(tiny_config(**{"model.class_conditional": True, "diffusion.num_timesteps": 20,
                                           "model.downsample_padding": "same"}), str(workdir), "sample",
                            overrides=("model.downsample_padding",))


@pytest.mark.parametrize("overrides,message", [
    ({"data.image_size": 8}, "was built for 16x16 images"),
    ({"model.init_from": "/tmp"}, "neither a diffusers folder"),
    ({"data.channels": 3}, "takes 1-channel images, the data has 3"),
])
def test_init_from_mismatches_are_config_errors(overrides, message, tmp_path):
    with pytest.raises(config_checks.ConfigError, match=message):
        train_loop.train(general_config(**overrides), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


# Each continuous family with fields off their defaults: a round trip that dropped one would sample otherwise.
CONTINUOUS = {"edm": {"diffusion.family": "edm", "diffusion.edm.sigma_data": 0.4, "diffusion.edm.sigma_max": 40.0,
                      "diffusion.edm.rho": 5.0, "diffusion.edm.p_mean": -1.0},
              "flow": {"diffusion.family": "flow", "diffusion.flow.shift": 2.0, "diffusion.flow.t_sampling": "uniform"},
              "vp": {"diffusion.family": "vp", "diffusion.schedule": "cosine", "diffusion.target": "v"}}
FEW_SAMPLES = {"sampling.sampler": "auto", "sampling.num_steps": 2, "sampling.num_samples": 2}


def _tiny_network(tmp_path) -> str:
    """A diffusers folder of a tiny random 8x8 one-channel U-Net, without a scheduler (its process is the
    config's); the weights are NumPy draws, so nothing is compiled."""
    unet = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=4, out_ch=1)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(np.float32),
                          diffusers_unet.param_shapes(unet, 8, 1))
    diffusers_unet.write_folder(tmp_path / "network", unet, params, 8)
    return str(tmp_path / "network")


def _process_and_samples(config, workdir):
    """The ``config.diffusion`` process a sample run of ``config`` uses (``target`` resolved), and its
    samples (float, key 0)."""
    opened = trained_model.open_trained(config, workdir, "sample", log=lambda *_: None)
    out = sample_mode.sample_images(opened.experiment, trained_model.load_params(opened), jax.random.key(0), 2)
    diffusion = opened.experiment.config.diffusion
    process = {name: diffusion[name] for name in model_source.PROCESS}
    return {**process, "target": resolve_target(diffusion)}, np.asarray(out.samples)


@pytest.mark.parametrize("family", sorted(CONTINUOUS))
def test_an_exported_continuous_model_samples_the_same(family, tmp_path):
    """--mode=export writes jaxdiff.json (and the family's diffusers scheduler, vp having none);
    model.init_from=<the export> on a config with the default (ddpm) diffusion settings reads the family
    and its every field back, and samples what the original does from the same key."""
    assert set(process_file.FIELDS) == set(model_source.PROCESS)
    config = tiny_config(**{"model.init_from": _tiny_network(tmp_path), **FEW_SAMPLES, **CONTINUOUS[family]})
    out = export_mode.run_export(config, str(tmp_path / "run"), log=lambda *_: None)
    scheduler = diffusers_unet.read_folder(out).scheduler
    assert (scheduler or {}).get("_class_name") == diffusers_scheduler.SCHEDULERS.get(family)
    assert not os.path.exists(os.path.join(out, "model_index.json"))  # no diffusers pipeline runs these
    assert f"--config.diffusion.family={family}" in interop_cli.describe(out)
    want_process, want = _process_and_samples(config, str(tmp_path / "original"))
    got_process, got = _process_and_samples(tiny_config(**{"model.init_from": out, **FEW_SAMPLES}),
                                            str(tmp_path / "exported"))
    assert got_process["family"] == family and got_process == want_process
    assert np.abs(want).max() > 0 and np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)


def _default_process() -> dict:
    """The jaxdiff.json content of the default diffusion settings."""
    return process_file.record({**tiny_config().diffusion.to_dict(), "target": "eps"})


DELETE = object()


def _edited(content: dict, changes: dict) -> str:
    """The JSON text of ``content`` with the fields at the dotted paths of ``changes`` set (``DELETE``
    removes one)."""
    out = json.loads(json.dumps(content))
    for dotted, value in changes.items():
        *path, leaf = dotted.split(".")
        node = out
        for name in path:
            node = node[name]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return json.dumps(out)


BAD_PROCESS_FILES = {  # (changes to a valid jaxdiff.json, or its whole text; what the error says)
    "not json": ("{not json", "cannot read"),
    "NaN": ({"diffusion.beta_start": float("nan")}, "NaN is not JSON"),
    "not an object": ("[1]", "is not a JSON object"),
    "newer format": ({"format": 2}, "format=2 is not one this jaxdiff reads (1)"),
    "unknown family": ({"diffusion.family": "ddim"}, "diffusion.family='ddim' is not one of"),
    "string number": ({"diffusion.num_timesteps": "1000"}, "diffusion.num_timesteps='1000' must be an integer"),
    "bool number": ({"diffusion.edm.rho": True}, "diffusion.edm.rho=True must be a finite number"),
    "missing field": ({"diffusion.flow.shift": DELETE}, "lacks diffusion.flow.shift"),
    "unknown field": ({"diffusion.loss_weighting": "none"}, "has an unknown field diffusion.loss_weighting"),
    "block not an object": ({"diffusion.edm": 1}, "diffusion.edm must be a JSON object"),
    "target of another family": ({"diffusion.family": "edm", "diffusion.target": "eps"},
                                 "diffusion.target='eps' does not fit family 'edm'"),
    "negative sigma": ({"diffusion.edm.sigma_min": -1.0}, "diffusion.edm.sigma_min=-1.0 must be positive"),
    "huge table": ({"diffusion.num_timesteps": 10**12}, "is above 100,000: no trained model has that many"),
    "no continuous form": ({"diffusion.family": "vp", "diffusion.schedule": "sigmoid_abar"},
                           "has no continuous-time form"),
}


@pytest.mark.parametrize("problem", sorted(BAD_PROCESS_FILES))
def test_bad_process_files_are_one_line_errors(problem, tmp_path):
    """A malformed jaxdiff.json is a one-line error naming the file and the field, through read_folder
    and through model.init_from (a ConfigError), before any weights are read."""
    folder = _copy("ddpm", tmp_path)
    changes, message = BAD_PROCESS_FILES[problem]
    text = changes if isinstance(changes, str) else _edited(_default_process(), changes)
    (folder / process_file.FILE_NAME).write_text(text)
    with pytest.raises(WeightsError) as e:
        diffusers_unet.read_folder(folder)
    assert "\n" not in str(e.value) and process_file.FILE_NAME in str(e.value) and message in str(e.value), str(e.value)
    with pytest.raises(config_checks.ConfigError, match="^model.init_from: .*jaxdiff.json") as e:
        model_source.open_source(tiny_config(**{"model.init_from": str(folder)}))
    assert "\n" not in str(e.value)


def test_an_unreadable_process_is_refused_before_writing(tmp_path):
    model = diffusers_unet.read_folder(fixture("ddpm"))
    diffusion = {**tiny_config().diffusion.to_dict(), "family": "edm", "target": "eps"}
    with pytest.raises(WeightsError, match="diffusion.target='eps' does not fit family 'edm'"):
        diffusers_unet.write_folder(tmp_path / "out", model.unet, model.params, model.image_size, None, diffusion)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- live, against diffusers


def test_live_parity_both_directions(tmp_path):
    """A random diffusers model loads into jaxdiff, and a random jaxdiff model exported loads in
    UNet2DModel.from_pretrained and runs in DDPMPipeline, output for output."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("tests.torch_imports").import_torchvision()
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                                   down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "AttnUpBlock2D"), layers_per_block=1,
                                   norm_num_groups=4, attention_head_dim=2, num_class_embeds=3).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([10, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        want = theirs(x, t, class_labels=y).sample.numpy()
    loaded = diffusers_unet.read_folder(tmp_path / "theirs")
    got = denoiser_apply(loaded.unet)(loaded.params, nhwc(x.numpy()), jnp.asarray(t.numpy()), jnp.asarray(y.numpy()))
    assert max_relative_error(np.asarray(got).transpose(0, 3, 1, 2), want) < PARITY_RTOL

    ours = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), groups=4, out_ch=3)
    params = init_denoiser(ours, jax.random.key(0), (8, 8, 3))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    scheduler = diffusers_scheduler.scheduler_config(
        {"family": "ddpm", "num_timesteps": 50, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
         "scale_betas_to_t": False, "zero_terminal_snr": False, "target": "eps"},
        {"variance": "fixed_small", "clip_x0": True}, "0.42.1")
    diffusers_unet.write_folder(tmp_path / "ours", ours, params, 8, scheduler)
    exported = diffusers.UNet2DModel.from_pretrained(tmp_path / "ours", subfolder="unet").eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 40])
    with torch.no_grad():
        want = exported(x, t).sample.numpy()
    got = denoiser_apply(ours)(params, nhwc(x.numpy()), jnp.asarray(t.numpy()))
    assert max_relative_error(np.asarray(got).transpose(0, 3, 1, 2), want) < PARITY_RTOL
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "ours")
    images = pipe(batch_size=2, num_inference_steps=50, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 3) and np.all(np.isfinite(images))


def _export_family(folder, family: str, spacing: str = "auto") -> tuple:
    """Export the general fixture's network as ``family`` (CONTINUOUS's fields) to ``folder``; returns
    the folder read back and the jaxdiff family of its jaxdiff.json."""
    model = diffusers_unet.read_folder(fixture("general"))
    config = general_config(**CONTINUOUS[family])
    diffusion = {**config.diffusion.to_dict(), "target": family}
    scheduler = diffusers_scheduler.scheduler_config(diffusion, {"spacing": spacing}, "0.42.1")
    diffusers_unet.write_folder(folder, model.unet, model.params, model.image_size, scheduler, diffusion)
    exported = diffusers_unet.read_folder(folder)
    return exported, process_file.build_family(exported.process)


def test_live_exported_schedulers_match_in_diffusers(tmp_path):
    """The exported EDMEulerScheduler and FlowMatchEulerDiscreteScheduler load in diffusers with
    jaxdiff's grids (sigmas, and timesteps = the network's time input) for the same number of steps, and
    one EDM denoising (diffusers' precondition_inputs / precondition_outputs around the exported
    UNet2DModel) is jaxdiff's. diffusers' default flow grid is another spacing (docs/interop.md): with
    jaxdiff's sigmas passed explicitly it is the same."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("tests.torch_imports").import_torchvision()
    diffusers = pytest.importorskip("diffusers")
    steps = 6
    for spacing, ours in (("logsnr", "logsnr"), ("auto", "karras")):  # diffusers' exponential, karras
        exported, family = _export_family(tmp_path / f"edm_{spacing}", "edm", spacing)
        theirs = diffusers.EDMEulerScheduler.from_pretrained(tmp_path / f"edm_{spacing}", subfolder="scheduler")
        theirs.set_timesteps(steps)
        grid = family.grid(steps, ours)
        np.testing.assert_allclose(theirs.sigmas.numpy(), grid.sigma, rtol=1e-6)
        np.testing.assert_allclose(theirs.timesteps.numpy(), family.sigma_to_input(grid.sigma[:-1]), rtol=1e-5)
    # the karras export: one denoising at the third sigma, diffusers' preconditioning around its UNet2DModel
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "edm_auto", subfolder="unet").eval()
    sigma = float(theirs.sigmas[2])
    x, y = torch.randn(2, 1, 16, 16) * sigma, torch.tensor([1, 7])
    with torch.no_grad():
        out = unet(theirs.precondition_inputs(x, sigma), theirs.precondition_noise(sigma), class_labels=y).sample
        want = theirs.precondition_outputs(x, out, sigma).numpy()
    apply = denoiser_apply(exported.unet)
    x0, _ = family.predict(lambda v, t: apply(exported.params, v, t, jnp.asarray(y.numpy())), nhwc(x.numpy()),
                           sigma, 1.0, sigma)
    assert max_relative_error(np.asarray(x0).transpose(0, 3, 1, 2), want) < PARITY_RTOL

    exported, family = _export_family(tmp_path / "flow", "flow")
    theirs = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "flow", subfolder="scheduler")
    grid = family.grid(steps, "uniform")
    theirs.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    np.testing.assert_allclose(theirs.sigmas.numpy(), grid.sigma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(theirs.timesteps.numpy(), families.NETWORK_TIME_SCALE * grid.time[:-1], rtol=1e-6)
    theirs.set_timesteps(steps)  # diffusers' own spacing: from 1 to the shifted 1 / 1000, shifted again
    assert theirs.sigmas[0] == 1.0 and theirs.sigmas[-1] == 0.0
    assert not np.allclose(theirs.sigmas.numpy(), grid.sigma)
