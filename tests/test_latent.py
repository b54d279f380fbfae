"""The two scaling routes through the drivers: --mode=train_autoencoder (its metrics, grids, bit-exact
resume), latent diffusion on its latents with either backbone (scale measured to unit std, recorded,
decoded samples in sample mode and eval's generator), DiT as the pixel-space backbone of any family,
and the mismatches as one-line errors."""

import json

import jax
import numpy as np
import pytest

from jaxdiff.data import load_source
from jaxdiff.drivers import (config_checks, eval_mode, export_mode, latent, model_source, restore, sample_mode,
                             train_loop)
from tests.conftest import tiny_config

AE = {"autoencoder.block_out_channels": (16, 32), "autoencoder.norm_num_groups": 8,
      "autoencoder.learning_rate": 2e-3, "training.warmup_steps": 0}
NETS = {"model.ch_mult": (1,), "model.attn_resolutions": (), "model.dit.depth": 2, "model.dit.hidden_size": 32,
        "model.dit.num_heads": 2, "model.class_conditional": True, "sampling.sampler": "ddim",
        "sampling.num_steps": 5, "sampling.num_samples": 10, "sampling.trajectory_every": 0}


def ae_config(**overrides):
    return tiny_config(**{**AE, **overrides})


def latent_config(autoencoder, backbone="unet", **overrides):
    return tiny_config(**{**NETS, "latent.autoencoder": str(autoencoder), "model.backbone": backbone,
                          "training.num_train_steps": 10, "sampling.clip_x0": False, **overrides})


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A digits autoencoder (f = 2: 8x8x1 -> 4x4x4) trained for 40 steps."""
    workdir = tmp_path_factory.mktemp("ae") / "run"
    train_loop.train_autoencoder(ae_config(**{"autoencoder.num_train_steps": 40, "training.checkpoint_every": 40,
                                              "training.log_every": 10}), str(workdir), progress=False)
    return workdir


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
def test_latent_diffusion_trains_on_unit_std_latents_and_samples_images(autoencoder, backbone, tmp_path):
    workdir = tmp_path / "ldm"
    config = latent_config(autoencoder, backbone)
    _, space, data = latent.encode_training_set(config, load_source(config.data, "train"), None, lambda *_: None)
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
    if backbone == "unet":
        opened = restore.open_latest(config, str(workdir), "eval", log=lambda *_: None)
        generate = eval_mode.make_image_generator(opened.experiment, config.sampling, 1.0, 4)
        out = generate(restore.load_params(opened), jax.random.key(0), np.arange(4, dtype=np.int32))
        assert out.shape == (4, 8, 8, 1)  # eval's FID and accuracy see decoded images
        # resume: 5 steps, then on to 10 from the checkpoint, is the 10-step run bit for bit
        split = tmp_path / "split"
        train_loop.train(latent_config(autoencoder, **{"training.num_train_steps": 5, "training.checkpoint_every": 5}),
                         str(split), progress=False)
        resumed = train_loop.train(config, str(split), progress=False)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dit_backbone_trains_and_samples_in_pixel_space(tmp_path):
    """DiT through the drivers in another family (flow), guided sampling from the checkpoint; resume and
    8 devices are the train loop's and the mesh's, tested for both backbones elsewhere."""
    config = tiny_config(**{**NETS, "model.backbone": "dit", "diffusion.family": "flow", "sampling.sampler": "euler",
                            "sampling.guidance_scale": 2.0, "training.num_train_steps": 6})
    state = train_loop.train(config, str(tmp_path / "a"), progress=False)
    assert "blocks_1" in state.params and "x_embedder" in state.params  # the DiT's parameters
    assert np.isfinite([r["loss"] for r in rows(tmp_path / "a")]).all()
    info = sample_mode.run_sample_mode(config, str(tmp_path / "a"))
    assert np.load(tmp_path / "a" / info["files"]["npz"])["images"].shape == (10, 8, 8, 1)


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
        restore.open_latest(tiny_config(**{"model.init_from": str(autoencoder)}), str(tmp_path / "x"), "sample")
    with pytest.raises(ValueError, match="this model is a latent diffusion model"):
        export_mode.run_export(latent_config(autoencoder), str(diffusion_run), log=lambda *_: None)
    assert not (tmp_path / "ldm" / "checkpoints").exists()
