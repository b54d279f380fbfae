"""Every field of configs/default.py: a bad value of each is refused by ``validate`` (before any
compile or write) with a one-line message that names the field. A field added to the config
without an entry here fails ``test_every_field_has_a_bad_value``."""

import ml_collections
import pytest

from configs import default
from jaxdiff.drivers import config_checks, eval_config, model_config
from jaxdiff.drivers.modes import MODES

# field -> (bad value, other fields it needs to be checked, what the message must contain if not the field)
BAD = {
    "seed": (-1,),
    "data.dataset": ("",),
    "data.image_size": (0,),
    "data.channels": (2,),
    "data.data_dir": ("/nonexistent", {"data.dataset": "idx", "data.data_dir": "/tmp"}),
    "data.download": (1,),
    "data.image_key": ("",),
    "data.label_key": ("",),
    "data.random_flip": (1,),
    "data.cache_max_mb": (-1,),
    "data.num_workers": (0,),
    "data.prefetch": (0,),
    "model.ch": (0,),
    "model.ch_mult": ((),),
    "model.num_res_blocks": (0,),
    "model.attn_resolutions": ((0,),),
    "model.dropout": (1.0,),
    "model.num_heads": (0,),
    "model.groups": (0,),
    "model.class_conditional": (1,),
    "model.remat": ("yes",),
    "model.downsample_padding": ("valid",),
    "model.norm_eps": (0.0,),
    "model.head_dim": (-1,),
    "model.flip_sin_to_cos": (1,),
    "model.freq_shift": (float("nan"),),
    "model.init_from": ("/nonexistent/model",),
    "model.backbone": ("resnet",),
    "model.dit.size": ("XXL",),
    "model.dit.depth": (0,),
    "model.dit.hidden_size": (30, {"model.backbone": "dit", "model.dit.num_heads": 2}, "multiple of 4"),
    "model.dit.num_heads": (3, {"model.backbone": "dit"}, "does not divide"),
    "model.dit.patch_size": (3, {"model.backbone": "dit"}, "model.dit.patch_size=3: image size"),
    "model.dit.mlp_ratio": (0.0,),
    "model.dit.learn_sigma": (1,),
    "model.dit.attention": ("flash",),
    "autoencoder.block_out_channels": ((),),
    "autoencoder.layers_per_block": (0,),
    "autoencoder.latent_channels": (0,),
    "autoencoder.norm_num_groups": (5,),
    "autoencoder.mid_attention": (1,),
    "autoencoder.reconstruction": ("lpips",),
    "autoencoder.kl_weight": (-1.0,),
    "autoencoder.num_train_steps": (0,),
    "autoencoder.learning_rate": (0.0,),
    "latent.autoencoder": ("/nonexistent/autoencoder",),
    "latent.scale_factor": (-1.0,),
    "diffusion.family": ("score_sde",),
    "diffusion.zero_terminal_snr": (1,),
    "diffusion.edm.sigma_data": (0.0, {"diffusion.family": "edm"}),
    "diffusion.edm.p_mean": (float("nan"), {"diffusion.family": "edm"}),
    "diffusion.edm.p_std": (-1.0, {"diffusion.family": "edm"}),
    "diffusion.edm.sigma_min": (0.0, {"diffusion.family": "edm"}),
    "diffusion.edm.sigma_max": (0.001, {"diffusion.family": "edm"}),
    "diffusion.edm.rho": (0.0, {"diffusion.family": "edm"}),
    "diffusion.flow.t_sampling": ("beta", {"diffusion.family": "flow"}),
    "diffusion.flow.loc": (float("inf"), {"diffusion.family": "flow"}),
    "diffusion.flow.scale": (0.0, {"diffusion.family": "flow"}),
    "diffusion.flow.shift": (0.0, {"diffusion.family": "flow"}),
    "diffusion.meanflow.p_mean": (float("nan"),),
    "diffusion.meanflow.p_std": (0.0,),
    "diffusion.meanflow.equal_fraction": (1.5,),
    "diffusion.meanflow.norm_p": (-1.0,),
    "diffusion.meanflow.norm_eps": (0.0,),
    "diffusion.consistency.schedule": ("lcm",),
    "diffusion.consistency.double_every": (0,),
    "diffusion.consistency.p_mean": (float("inf"),),
    "diffusion.consistency.p_std": (-1.0,),
    "diffusion.consistency.huber_c": (-0.1,),
    "diffusion.consistency.sigma_min": (0.0,),
    "diffusion.consistency.sigma_max": (0.001,),
    "diffusion.consistency.rho": (0.0,),
    "diffusion.scm.sigma_data": (0.0,),
    "diffusion.scm.p_mean": (float("nan"),),
    "diffusion.scm.p_std": (0.0,),
    "diffusion.scm.warmup_steps": (-1,),
    "diffusion.scm.tangent_c": (0.0,),
    "diffusion.shortcut.levels": (0,),
    "diffusion.shortcut.bootstrap_every": (0,),
    "diffusion.num_timesteps": (0,),
    "diffusion.schedule": ("quadratic",),
    "diffusion.beta_start": (0.0,),
    "diffusion.beta_end": (1e-5,),
    "diffusion.scale_betas_to_t": (1,),
    "diffusion.target": ("score",),
    "diffusion.loss_weighting": ("p2",),
    "diffusion.min_snr_gamma": (0.0,),
    "training.batch_size": (0,),
    "training.grad_accum_steps": (0,),
    "training.dtype": ("float16",),
    "training.num_train_steps": (0,),
    "training.optimizer": ("sgd",),
    "training.learning_rate": (0.0,),
    "training.warmup_steps": (-1,),
    "training.adam_b1": (1.0,),
    "training.adam_b2": (-0.1,),
    "training.adam_eps": (0.0,),
    "training.weight_decay": (-1.0,),
    "training.grad_clip_norm": (float("nan"),),
    "training.ema_decay": (1.0,),
    "training.ema_warmup": (0,),
    "training.ema_stds": ((0.05, 0.3),),
    "training.ema_snapshot_every": (-1,),
    "training.lr_schedule": ("linear",),
    "training.lr_decay_steps": (-1,),
    "training.label_dropout": (1.0,),
    "training.log_every": (0,),
    "training.checkpoint_every": (0,),
    "training.sample_every": (-1,),
    "training.max_minutes": (-1.0,),
    "training.keep_checkpoints": (0,),
    "training.eval_every": (-1,),
    "parallel.num_devices": (-1,),
    "parallel.shard_params": (1,),
    "parallel.shard_min_size": (-1,),
    "sampling.sampler": ("rk4",),
    "sampling.sde_eta": (-1.0,),
    "sampling.s_churn": (-1.0,),
    "sampling.s_min": (-1.0,),
    "sampling.s_max": (float("nan"),),
    "sampling.s_noise": (-1.0,),
    "sampling.guidance_interval": ((5.0, 1.0), {"model.class_conditional": True}),
    "sampling.num_steps": (-1,),
    "sampling.spacing": ("random",),
    "sampling.eta": (-1.0,),
    "sampling.set_alpha_to_one": (1,),
    "sampling.labels": ("3,5",),
    "sampling.guidance_scale": (-1.0,),
    "sampling.num_samples": (0,),
    "sampling.batch_size": (0,),
    "sampling.variance": ("learned",),
    "sampling.clip_x0": (1,),
    "sampling.use_ema": (1,),
    "sampling.ema_std": (0.5,),
    "sampling.trajectory_every": (-1,),
    "sampling.save_pngs": (1,),
    "sampling.grid_sampler": ("rk4",),
    "sampling.grid_num_steps": (0,),
    "edit.task": ("paint",),
    "edit.input": ("",),
    "edit.num_images": (0,),
    "edit.samples_per_image": (0,),
    "edit.method": ("repaint", {"edit.task": "restore"}),
    "edit.mask": ("box:1,2",),
    "edit.operator": ("sharpen",),
    "edit.operator_scale": (-1.0,),
    "edit.measurement_noise": (-0.1,),
    "edit.strength": (1.5,),
    "edit.jump_length": (0,),
    "edit.jump_n_sample": (0,),
    "edit.dps_scale": (-1.0,),
    "edit.interpolation_points": (1,),
    "edit.labels": (3,),
    "eval.feature_extractor": ("lenet",),
    "eval.sampler": ("rk4",),
    "eval.num_steps": (0,),
    "eval.inception_weights": ("/nonexistent.npz", {"eval.feature_extractor": "inception",
                                                    "eval.num_samples": 4096}, "/nonexistent.npz"),
    "eval.num_samples": (0,),
    "eval.batch_size": (0,),
    "eval.reference_split": ("val",),
    "eval.kid_subsets": (0,),
    "eval.kid_subset_size": (0,),
    "eval.bpd": (1,),
    "eval.bpd_num_images": (-1,),
    "eval.bpd_batch_size": (0,),
    "eval.bpd_clip_x0": (1,),
    "eval.fid_guidance_scale": (-1.0,),
    "eval.guidance_scales": ((),),
    "eval.samples_per_class": (0,),
    "eval.train_fid_samples": (0,),
    "eval.classifier_dir": (5,),
    "eval.classifier_ch": (0,),
    "eval.classifier_features": (0,),
    "eval.classifier_steps": (0,),
    "eval.classifier_batch_size": (0,),
    "eval.classifier_learning_rate": (0.0,),
}


def fields(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from fields(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def with_values(values: dict) -> ml_collections.ConfigDict:
    """configs/default.py with ``values`` set, of any type (as a config file could set them)."""
    tree = default.get_config().to_dict()
    for field, value in values.items():
        node = tree
        *path, leaf = field.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return ml_collections.ConfigDict(tree)


def test_every_field_has_a_bad_value():
    assert set(fields(default.get_config().to_dict())) == set(BAD)


def test_the_defaults_are_valid():
    config_checks.validate(default.get_config())


@pytest.mark.parametrize("field", sorted(BAD))
def test_a_bad_value_is_refused_naming_the_field(field):
    """Through what the modes run first: ``validate`` (every mode), then the eval checks with the
    Inception weights read (``--mode=eval``, and training with ``training.eval_every``)."""
    entry = BAD[field]
    bad, needs = entry[0], entry[1] if len(entry) > 1 else {}
    names = entry[2] if len(entry) > 2 else field
    config_checks.validate(with_values(needs))  # the context alone is valid
    config = with_values({**needs, field: bad})
    with pytest.raises(config_checks.ConfigError) as e:
        config_checks.validate(config)
        eval_config.validate_eval(config, check_weights=True)
    message = str(e.value)
    assert "\n" not in message and names in message, message


def test_each_mode_checks_only_its_blocks():
    """Each mode's blocks (``MODES``): a bad edit or eval field stops the modes that read it, not export or
    sample; a bad autoencoder field stops train_autoencoder (and train, which checks every block), not sample."""
    blocks = {name: mode.blocks for name, mode in MODES.items()}
    for field, bad, stopped, passed in (("edit.task", "paint", ("train", "edit"), ("sample", "eval", "export")),
                                        ("eval.kid_subsets", 0, ("train", "eval"), ("sample", "edit", "export")),
                                        ("autoencoder.layers_per_block", 0, ("train", "train_autoencoder"),
                                         ("sample", "export"))):
        config = with_values({field: bad})
        for mode in stopped:
            with pytest.raises(config_checks.ConfigError, match=field):
                config_checks.validate(config, blocks[mode])
        for mode in passed:
            config_checks.validate(config, blocks[mode])
    assert set(blocks) == {"train", "sample", "eval", "edit", "export", "train_autoencoder"}
    assert blocks["train"] == config_checks.ALL_BLOCKS


def test_every_backbone_validates_builds_and_defines_a_checkpoint():
    """Every entry of ``jaxdiff.models.backbones.BACKBONES`` validates with the default config, builds its
    module, and its architecture fields are among those a checkpoint records (``model_source.DEFINING``).
    (That no other module compares a backbone name: tests/test_registries.py.)"""
    from jaxdiff.drivers import model_source
    from jaxdiff.models.backbones import BACKBONES

    for name, backbone in BACKBONES.items():
        assert all(f"{backbone.config_block}.{n}" in model_source.DEFINING for n in backbone.architecture_fields)
        config = with_values({"model.backbone": name})
        config_checks.validate(config)
        assert isinstance(model_config.build_model(config, 1, 10), backbone.module)
