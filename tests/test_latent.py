"""The two scaling routes through the drivers: --mode=train_autoencoder (its metrics, grids, bit-exact
resume), latent diffusion on its latents with either backbone (scale measured to unit std, recorded,
decoded samples in sample, eval and edit mode), and the mismatches as one-line errors."""

import copy
import json

import jax
import numpy as np
import pytest

from jaxdiff.drivers import (config_checks, data_config, edit_mode, eval_mode, export_mode, latent, model_source,
                             sample_mode, train_loop, trained_model)
from tests.conftest import FAST_MODES, ae_config, tiny_config

NETS = {"model.ch_mult": (1,), "model.attn_resolutions": (), "model.dit.depth": 2, "model.dit.hidden_size": 32,
        "model.dit.num_heads": 2, "model.class_conditional": True, "sampling.sampler": "ddim",
        "sampling.num_steps": 5, "sampling.num_samples": 10, "sampling.trajectory_every": 0}


def latent_config(autoencoder, backbone="unet", **overrides):
    return tiny_config(**{**NETS, "latent.autoencoder": str(autoencoder), "model.backbone": backbone,
                          "training.num_train_steps": 10, "sampling.clip_x0": False, **overrides})


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def autoencoder(digits_autoencoder):
    return digits_autoencoder


def test_autoencoder_training_reconstructs_better_and_writes_its_grid(autoencoder):
    metrics = rows(autoencoder)
    assert [r["step"] for r in metrics] == [10, 20, 30, 40]
    assert metrics[-1]["recon"] < 0.6 * metrics[0]["recon"] and metrics[-1]["psnr"] > metrics[0]["psnr"] + 3
    assert all(k in metrics[0] for k in ("loss", "kl", "psnr", "grad_norm", "learning_rate"))
    assert (autoencoder / "reconstructions_0000040.png").stat().st_size > 500
    latest = model_source.latest_checkpoint(autoencoder)
    assert latest.meta["kind"] == "autoencoder" and latest.step == 40
    latest.manager.close()


def test_autoencoder_resume_is_bit_exact(tmp_path):
    config = ae_config(**{"autoencoder.num_train_steps": 8, "training.checkpoint_every": 4, "training.log_every": 4})
    full = train_loop.train_autoencoder(config, str(tmp_path / "full"), progress=False)
    train_loop.train_autoencoder(ae_config(**{"autoencoder.num_train_steps": 4, "training.checkpoint_every": 4,
                                              "training.log_every": 4}), str(tmp_path / "split"), progress=False)
    resumed = train_loop.train_autoencoder(config, str(tmp_path / "split"), progress=False)
    assert int(resumed.step) == int(full.step) == 8
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_latent_diffusion_trains_on_unit_std_latents_and_every_mode_runs(autoencoder, backbone, classifier_dir,
                                                                         tmp_path):
    """Train, sample, eval, edit and resume (bit for bit) a latent model of either backbone; its export
    is refused in one line. (The pixel-space models' modes: tests/test_modes.py.)"""
    workdir = tmp_path / "ldm"
    config = latent_config(autoencoder, backbone, **{**FAST_MODES, "eval.classifier_dir": str(classifier_dir)})
    source = data_config.load_source(config.data, "train")
    space, data = latent.encode_training_set(copy.deepcopy(config), source, lambda *_: None)
    assert data.image_shape == (4, 4, 4) and abs(float(np.std(data.images)) - 1.0) < 1e-3  # measured scale
    state = train_loop.train(config, str(workdir), progress=False)
    losses = [r["loss"] for r in rows(workdir)]
    assert np.isfinite(losses).all() and int(state.step) == 10
    latest = model_source.latest_checkpoint(workdir)
    meta = latest.meta
    latest.manager.close()
    assert meta["latent"]["scale_factor"] == pytest.approx(space.scale) and meta["channels"] == 4
    assert meta["config"]["latent"]["scale_factor"] == pytest.approx(space.scale)
    assert meta["latent"]["autoencoder_step"] == 40 and (workdir / "samples_0000010.png").exists()
    info = sample_mode.run_sample_mode(config, str(workdir))  # the checkpoint says which autoencoder decodes
    images = np.load(workdir / info["files"]["npz"])["images"]
    assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
    metrics = eval_mode.run_eval(config, str(workdir), log=lambda *_: None)  # FID of decoded images
    assert np.isfinite(metrics["fid"]) and metrics["bpd"] is None and "FID" in eval_mode.summary_line(metrics)
    edited = edit_mode.run_edit_mode(config, str(workdir))  # SDEdit in the latent space
    assert np.load(workdir / edited["files"]["npz"])["results"].shape == (4, 8, 8, 1)  # 2 images x 2 samples
    with pytest.raises(ValueError, match="--mode=export writes pixel-space U-Nets"):
        export_mode.run_export(config, str(workdir), log=lambda *_: None)
    if backbone == "unet":
        # resume: 5 steps, then on to 10 from the checkpoint, is the 10-step run bit for bit
        split = tmp_path / "split"
        train_loop.train(latent_config(autoencoder, **{"training.num_train_steps": 5, "training.checkpoint_every": 5}),
                         str(split), progress=False)
        resumed = train_loop.train(config, str(split), progress=False)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_autoencoders_are_one_line_errors(autoencoder, tmp_path):
    diffusion_run = tmp_path / "diffusion"  # a diffusion checkpoint (of a latent model: any kind but autoencoder)
    train_loop.train(latent_config(autoencoder, **{"training.num_train_steps": 1, "training.checkpoint_every": 1,
                                                   "training.log_every": 1}), str(diffusion_run), progress=False)
    cases = [
        (latent_config(diffusion_run), "holds a diffusion checkpoint, not an autoencoder's"),
        (latent_config(autoencoder, **{"data.image_size": 16}), "was trained on 8x8 images"),
        (latent_config(tmp_path), "has no checkpoint: train one there with --mode=train_autoencoder"),
    ]
    for config, message in cases:
        with pytest.raises(config_checks.ConfigError, match=message):
            train_loop.train(config, str(tmp_path / "ldm"), progress=False)
    with pytest.raises(config_checks.ConfigError, match="holds a diffusion checkpoint"):
        train_loop.train_autoencoder(ae_config(), str(diffusion_run), progress=False)
    with pytest.raises(config_checks.ConfigError, match="holds an autoencoder checkpoint"):
        train_loop.train(tiny_config(), str(autoencoder), progress=False)
    with pytest.raises(config_checks.ConfigError, match="holds an autoencoder: init_from takes pixel-space"):
        trained_model.open_trained(tiny_config(**{"model.init_from": str(autoencoder)}), str(tmp_path / "x"), "sample")
    with pytest.raises(ValueError, match="this model is a latent diffusion model"):
        export_mode.run_export(latent_config(autoencoder), str(diffusion_run), log=lambda *_: None)
    assert not (tmp_path / "ldm" / "checkpoints").exists()
