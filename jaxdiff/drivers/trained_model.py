"""The trained network a mode uses, opened one way for sample, eval, edit and export: check the config,
find the network (the work directory's latest checkpoint, else ``model.init_from``), build the
:class:`~jaxdiff.drivers.experiment.Experiment` its config and data shape need, then load, in that
order, so every mistake is a one-line error before anything is compiled."""

from __future__ import annotations

from typing import NamedTuple

from jaxdiff.common import paths
from jaxdiff.drivers import config_checks, latent, model_source
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint, posthoc_ema


class OpenModel(NamedTuple):
    """The network of a sample or eval run, nothing loaded yet: ``workdir`` (an ``epath.Path``), the
    ``step`` of its checkpoint (0 for an ``init_from`` source), the ``experiment`` of its config and data
    shape, and where the weights come from: ``latest`` (the checkpoint) or ``source`` (``model.init_from``)."""

    workdir: object
    step: int
    experiment: Experiment
    latest: model_source.LatestCheckpoint | None
    source: model_source.ModelSource | None

    def describe(self) -> str:
        if self.latest is not None:
            return f"checkpoint {self.step} of {self.workdir}"
        return f"model.init_from={self.source.path} ({self.source.kind})"


def open_trained(config, workdir, mode: str, log=print, overrides=(),
                blocks=config_checks.DIFFUSION_BLOCKS) -> OpenModel:
    """Validate the ``blocks`` of ``config`` that ``--mode=mode`` reads (the mode module's ``BLOCKS``) and
    open its network in ``workdir``.

    The checkpoint's recorded network and process replace the config's (a replaced field said in one
    ``log`` line; one of ``overrides``, the fields set by ``--config.FIELD`` flags, is an error: see
    :func:`~jaxdiff.drivers.model_source.resolve`, the one copy of the config the mode uses), and the
    config is validated again with them, so
    the sampling choices are checked against the process the checkpoint was trained on. Nothing is
    written: the mode checks its own inputs, then :func:`~jaxdiff.drivers.config_checks.check_workdir`.

    Raises :class:`~jaxdiff.drivers.config_checks.ConfigError` for a bad config or an unusable
    ``model.init_from``, and
    :class:`~jaxdiff.training.checkpoint.CheckpointError` when there is neither a checkpoint nor an
    ``init_from`` (saying how to make one) or the checkpoint's metadata cannot be read."""
    config_checks.validate(config, blocks)
    if not workdir:
        raise config_checks.ConfigError("--workdir is required")
    latest = model_source.latest_checkpoint(workdir)
    model_source.check_kind(latest, "diffusion", workdir)
    source = None if latest is not None else model_source.open_source(config)
    if latest is None and source is None:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}: train first with --mode=train and the same "
            f"--config and --workdir, or name a model with --config.model.init_from, then run --mode={mode}")
    workdir = paths.as_path(workdir)
    try:
        config = model_source.resolve(config, latest, source, log, overrides)
        config_checks.validate(config, blocks)
    except config_checks.ConfigError:
        if latest is not None:
            latest.manager.close()
        raise
    if latest is None:
        return OpenModel(workdir, 0, Experiment(config, source.channels, source.num_classes), None, source)
    space = None
    if latest.meta.get("latent"):  # a latent diffusion model: decode with the autoencoder it trained on
        space = latent.open_latent_space(config, config.latent.scale_factor, log)
    experiment = Experiment(config, latest.meta["channels"], latest.meta["num_classes"], latent=space)
    return OpenModel(workdir, latest.step, experiment, latest, None)


def load_params(opened: OpenModel, use_ema: bool = True, ema_std: float = 0.0):
    """The parameters of ``opened`` (its EMA ones with ``use_ema``; with ``ema_std > 0`` the post-hoc EMA
    of that relative std, :func:`posthoc_params`), placed as its experiment shards them; the checkpoint's
    manager is closed afterwards."""
    if use_ema and ema_std and not opened.experiment.config.training.ema_stds:
        raise config_checks.ConfigError(
            f"sampling.ema_std={ema_std} reconstructs a post-hoc EMA, but {opened.describe()} tracked no EMA "
            "profiles: train with e.g. --config.training.ema_stds='(0.05, 0.1)', or set sampling.ema_std=0")
    if opened.latest is None:
        return model_source.place(opened.source.load_params(use_ema), opened.experiment)
    state, _ = checkpoint.restore(opened.latest.manager, opened.experiment.abstract_state(), opened.step)
    opened.latest.manager.close()
    if use_ema and ema_std:
        return posthoc_params(opened, state, ema_std)
    return state.ema_params if use_ema else state.params


def posthoc_params(opened: OpenModel, state, ema_std: float):
    """The post-hoc EMA of relative std ``ema_std`` at the checkpoint's step: the least-squares combination
    (:func:`jaxdiff.training.posthoc_ema.posthoc_coefficients`) of the snapshots before that step in
    ``<workdir>/ema_snapshots`` and the checkpoint's own profiles, read one snapshot at a time."""
    stds = tuple(opened.experiment.config.training.ema_stds)
    abstract = opened.experiment.abstract_state().ema_profiles
    mngr = (checkpoint.snapshot_manager(opened.workdir, read_only=True)
            if checkpoint.snapshot_dir(opened.workdir).exists() else None)
    earlier = [s for s in mngr.all_steps() if s < opened.step] if mngr is not None else []
    steps = [s for s in earlier for _ in stds] + [opened.step] * len(stds)
    coefficients = posthoc_ema.posthoc_coefficients(steps, list(stds) * (len(earlier) + 1), opened.step, ema_std)

    def snapshots():
        for step in earlier:
            yield from checkpoint.restore(mngr, abstract, step)[0]
        yield from state.ema_profiles

    try:
        return posthoc_ema.reconstruct(snapshots(), coefficients)
    finally:
        if mngr is not None:
            mngr.close()
