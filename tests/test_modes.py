"""Every mode for every family and both backbones end to end on tiny runs (in process, as main.py calls
them): train, resume, sample, eval, edit, and export with ``model.init_from`` of the export (a DiT's
export is refused in one line; latent models: tests/test_latent.py). Then what a user may type
after training: the checkpoint's recorded network and process win over a config file's, a ``--config``
flag that contradicts them is a one-line error that leaves the work directory as it was, and no two
differing requests write the same file."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxdiff.drivers import config_checks, edit_mode, eval_mode, export_mode, model_source, sample_mode, train_loop
from jaxdiff.drivers.diffusion_config import family_from_config
from tests.conftest import FAST_MODES, tiny_config

FAMILIES = ("ddpm", "vp", "edm", "flow", "meanflow", "shortcut", "consistency", "consistency_flow", "scm")
# every family with both backbones but those whose network runs with the DiT under another family:
# shortcut's (MeanFlow's), the consistency families' (EDM's and flow's); scm's forward-mode DiT is meanflow's
CASES = [(family, backbone) for family in FAMILIES for backbone in ("unet", "dit")
         if backbone == "unet" or family not in ("shortcut", "consistency", "consistency_flow", "scm")]

RUN = {  # tiny networks, 2 + 1 training steps, one 3-step sampler for everything (and FAST_MODES' eval and edit)
    "model.ch_mult": (1,), "model.attn_resolutions": (), "model.groups": 4, "model.dit.depth": 1,
    "model.dit.hidden_size": 16, "model.dit.num_heads": 2, "diffusion.num_timesteps": 20,
    "training.num_train_steps": 2, "training.checkpoint_every": 2, "training.log_every": 1,
    "sampling.num_steps": 3, "sampling.num_samples": 4, "sampling.batch_size": 4, "sampling.trajectory_every": 1,
    **FAST_MODES,
}


def quiet(*_):
    pass


def run_config(classifier_dir, **overrides):
    return tiny_config(**{**RUN, "eval.classifier_dir": str(classifier_dir), **overrides})


def recorded_config(workdir) -> dict:
    latest = model_source.latest_checkpoint(workdir)
    latest.manager.close()
    return latest.meta["config"]


def check_every_mode(config, workdir, exportable: bool, tmp_path):
    """Train, resume (bit-identical to an uninterrupted run), sample, eval, edit and export (then sample
    the export by ``model.init_from`` with the default config) ``config`` in ``workdir``. (A latent
    model's: tests/test_latent.py; resume across checkpoint intervals, metrics lines and post-hoc EMA
    snapshots, on both JAX tiers: tests/test_train.py.)"""
    train_loop.train(config, workdir, progress=False)
    longer = config.copy_and_resolve_references()
    longer.training.num_train_steps = 3
    resumed = train_loop.train(longer, workdir, progress=False)
    straight = train_loop.train(longer, str(tmp_path / "straight"), progress=False)
    assert int(resumed.step) == int(straight.step) == 3
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):  # resume is bit-identical
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == [1, 2, 3]
    info = sample_mode.run_sample_mode(config, workdir)
    images = np.load(os.path.join(workdir, info["files"]["npz"]))["images"]
    assert images.shape == (4, 8, 8, 1) and info["family"] == config.diffusion.family
    metrics = eval_mode.run_eval(config, workdir, log=quiet)
    assert np.isfinite(metrics["fid"]) and (metrics["bpd"] is not None) == (
        config.diffusion.family == "ddpm" and not config.latent.autoencoder)
    assert f"FID {metrics['fid']:.3f}" in eval_mode.summary_line(metrics)  # main.py's line
    assert os.path.exists(os.path.join(workdir, "eval", "metrics.json"))
    edited = edit_mode.run_edit_mode(config, workdir)
    assert os.path.exists(os.path.join(workdir, edited["files"]["npz"]))
    if not exportable:
        with pytest.raises(ValueError, match="--mode=export writes pixel-space U-Nets"):
            export_mode.run_export(config, workdir, log=quiet)
        return
    exported = export_mode.run_export(config, workdir, log=quiet)
    # a default config (ddpm) samples the export as what it is
    default = tiny_config(**{"model.init_from": exported, "sampling.num_steps": 3, "sampling.num_samples": 4,
                             "sampling.trajectory_every": 0})
    again = sample_mode.run_sample_mode(default, str(tmp_path / "from_export"))
    assert again["family"] == config.diffusion.family
    assert np.load(tmp_path / "from_export" / again["files"]["npz"])["images"].shape == (4, 8, 8, 1)


@pytest.mark.parametrize("family, backbone", CASES)
def test_every_mode_runs_for_every_family_and_backbone(family, backbone, classifier_dir, tmp_path):
    config = run_config(classifier_dir, **{"diffusion.family": family, "model.backbone": backbone})
    # export writes diffusers UNet2DModels (no second time input) with a jaxdiff.json sampler (no few-step jump)
    exportable = backbone == "unet" and family_from_config(config.diffusion).jump is None
    check_every_mode(config, str(tmp_path / "run"), exportable, tmp_path)


# ----------------------------------------------------------------------------- the run is the truth


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A 2-step EDM digits run (``configs/digits.py:edm`` shrunk)."""
    workdir = tmp_path_factory.mktemp("edm") / "run"
    train_loop.train(run_config(workdir.parent / "classifier", **{"diffusion.family": "edm"}), str(workdir),
                     progress=False)
    return workdir


def snapshot(workdir) -> dict:
    """Every path under ``workdir`` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, workdir)] = (os.path.getsize(path), os.path.getmtime(path))
    return out


def test_the_checkpoint_family_wins_over_the_config_file(edm_run, classifier_dir, tmp_path, capsys):
    """Sampling with the config file's ddpm and resuming with its flow both run the recorded EDM model,
    saying so; a --config flag that says otherwise is an error before anything is written."""
    workdir = str(shutil.copytree(edm_run, tmp_path / "run"))
    ddpm = run_config(classifier_dir)  # the ":edm" forgotten
    info = sample_mode.run_sample_mode(ddpm, workdir)
    assert info["family"] == "edm" and info["sampler"] == "heun"
    assert "the checkpoint sets diffusion.family='edm' (the config had 'ddpm')\n" in capsys.readouterr().out
    meta = json.loads(str(np.load(os.path.join(workdir, info["files"]["npz"]))["meta"]))
    assert meta["family"] == "edm"

    before = snapshot(workdir)
    cases = [
        (run_config(classifier_dir, **{"diffusion.family": "flow"}), ("diffusion.family",),
         "--config.diffusion.family='flow' but the checkpoint has diffusion.family='edm'"),
        (run_config(classifier_dir, **{"diffusion.family": "edm", "model.ch": 16}), ("model.ch",),
         "--config.model.ch=16 but the checkpoint has model.ch=8"),
        (run_config(classifier_dir, **{"diffusion.family": "edm", "data.channels": 3}), (),
         "the checkpoint's network takes 1-channel images, the data (digits) has 3"),
    ]
    for config, overrides, message in cases:
        with pytest.raises(config_checks.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            train_loop.train(config, workdir, progress=False, overrides=overrides)
    with pytest.raises(config_checks.ConfigError, match="diffusion.family='flow' but the checkpoint"):
        sample_mode.run_sample_mode(cases[0][0], workdir, overrides=("diffusion.family",))
    assert snapshot(workdir) == before  # refused: nothing written, nothing touched

    flow = run_config(classifier_dir, **{"diffusion.family": "flow", "training.num_train_steps": 3})
    train_loop.train(flow, workdir)
    assert recorded_config(workdir)["diffusion"]["family"] == "edm"  # one objective throughout
    assert "the checkpoint sets diffusion.family='edm' (the config had 'flow')" in capsys.readouterr().out


def test_no_request_overwrites_another(edm_run, classifier_dir, tmp_path):
    workdir = str(shutil.copytree(edm_run, tmp_path / "run"))
    config = run_config(classifier_dir, **{"diffusion.family": "edm", "sampling.trajectory_every": 0})
    first = sample_mode.run_sample_mode(config, workdir)
    second = sample_mode.run_sample_mode(run_config(classifier_dir, **{
        "diffusion.family": "edm", "sampling.trajectory_every": 0, "seed": 1, "sampling.num_samples": 2}), workdir)
    names = {first["files"]["npz"], second["files"]["npz"]}
    assert len(names) == 2 and all(os.path.exists(os.path.join(workdir, n)) for n in names)
    assert "_seed1_n2_" in second["files"]["npz"]
    assert len(np.load(os.path.join(workdir, first["files"]["npz"]))["images"]) == 4

    restore = {"diffusion.family": "edm", "edit.task": "restore", "edit.operator": "super_resolution",
               "edit.method": "ddnm", "edit.num_images": 1}
    x2 = edit_mode.run_edit_mode(run_config(classifier_dir, **restore, **{"edit.operator_scale": 2.0}), workdir)
    x4 = edit_mode.run_edit_mode(run_config(classifier_dir, **restore, **{"edit.operator_scale": 4.0}), workdir)
    inpaint = {"diffusion.family": "edm", "edit.task": "inpaint", "edit.method": "ddnm", "edit.num_images": 1}
    left = edit_mode.run_edit_mode(run_config(classifier_dir, **inpaint, **{"edit.mask": "left"}), workdir)
    right = edit_mode.run_edit_mode(run_config(classifier_dir, **inpaint, **{"edit.mask": "right"}), workdir)
    folders = {os.path.dirname(out["files"]["npz"]) for out in (x2, x4, left, right)}
    assert len(folders) == 4 and all(os.path.exists(os.path.join(workdir, f, "edit.npz")) for f in folders)
    assert "super_resolution2_" in x2["files"]["npz"] and "super_resolution4_" in x4["files"]["npz"]


def test_a_few_step_family_starts_from_a_run_of_its_base_family(edm_run, classifier_dir, tmp_path, capsys):
    """``model.init_from`` of an EDM run starts an ECT consistency model, and of a flow run a MeanFlow
    model (its span branch added, zero-initialised): the config's family is kept, said in one line."""
    ect = run_config(classifier_dir, **{"diffusion.family": "consistency", "diffusion.consistency.schedule": "ect",
                                        "model.init_from": str(edm_run)})
    train_loop.train(ect, str(tmp_path / "ect"), overrides=("diffusion.family",))
    assert recorded_config(tmp_path / "ect")["diffusion"]["family"] == "consistency"
    assert "the edm model starts a diffusion.family='consistency' model" in capsys.readouterr().out
    flow_dir = tmp_path / "flow"
    train_loop.train(run_config(classifier_dir, **{"diffusion.family": "flow"}), str(flow_dir), progress=False)
    mf = run_config(classifier_dir, **{"diffusion.family": "meanflow", "model.init_from": str(flow_dir)})
    train_loop.train(mf, str(tmp_path / "mf"), progress=False)
    assert recorded_config(tmp_path / "mf")["diffusion"]["family"] == "meanflow"
    info = sample_mode.run_sample_mode(mf, str(tmp_path / "mf"))
    assert info["family"] == "meanflow" and info["sampler"] == "jump"
