"""Every ``--mode`` by name: :data:`MODES`, from the name to a :class:`Mode` (how it runs, the config
blocks it reads, one line of help). ``main.py`` parses flags and runs ``MODES[--mode]``; a new mode is a
module ``drivers/<name>_mode.py`` with a ``run`` function and ``BLOCKS``, and one line here."""

from __future__ import annotations

from typing import Callable, NamedTuple

from jaxdiff.drivers import edit_mode, eval_mode, export_mode, sample_mode, train_loop


class Mode(NamedTuple):
    """``run(config, workdir, overrides) -> str``: do the work (``overrides``: the dotted fields set by
    ``--config.FIELD`` flags) and return the line to print when it is done; ``blocks``: the config blocks
    it validates before anything else; ``help``: what it does, for ``--help``."""

    run: Callable[..., str]
    blocks: tuple
    help: str


def _train(config, workdir, overrides=()) -> str:
    train_loop.train(config, workdir, overrides=overrides)
    return f"done: checkpoints, samples_*.png, loss.png and metrics.jsonl in {workdir}"


def _sample(config, workdir, overrides=()) -> str:
    info = sample_mode.run_sample_mode(config, workdir, overrides=overrides)
    return f"wrote {info['num_samples']} samples to {workdir}"


def _eval(config, workdir, overrides=()) -> str:
    metrics = eval_mode.run_eval(config, workdir, overrides=overrides)
    return f"wrote {workdir}/eval/metrics.json: " + eval_mode.summary_line(metrics)


def _edit(config, workdir, overrides=()) -> str:
    info = edit_mode.run_edit_mode(config, workdir, overrides=overrides)
    return f"wrote {workdir}/{info['files']['grid']} and {info['num_images']} inputs' results"


def _export(config, workdir, overrides=()) -> str:
    return f"wrote a diffusers folder to {export_mode.run_export(config, workdir, overrides=overrides)}"


def _train_autoencoder(config, workdir, overrides=()) -> str:
    del overrides  # an autoencoder's work directory records no diffusion process to keep
    train_loop.train_autoencoder(config, workdir)
    return f"done: autoencoder checkpoints, reconstructions_*.png and metrics.jsonl in {workdir}"


MODES: dict[str, Mode] = {
    "train": Mode(_train, train_loop.BLOCKS, "train (or resume: the work directory's checkpoint continues)"),
    "sample": Mode(_sample, sample_mode.BLOCKS, "samples of the latest checkpoint (or model.init_from)"),
    "eval": Mode(_eval, eval_mode.BLOCKS, "FID / KID / bits per dim / class accuracy of the latest checkpoint"),
    "edit": Mode(_edit, edit_mode.BLOCKS, "inpaint, SDEdit, restore, invert or interpolate images as config.edit "
                                          "says"),
    "export": Mode(_export, export_mode.BLOCKS, "a diffusers folder <workdir>/diffusers_<step>_<digest>"),
    "train_autoencoder": Mode(_train_autoencoder, train_loop.AUTOENCODER_BLOCKS,
                              "the KL autoencoder of config.autoencoder, for latent.autoencoder"),
}
