"""The one restore path of sample mode and eval mode: check the config, find the latest checkpoint
of a work directory, build the :class:`~jaxdiff.drivers.experiment.Experiment` its data shape needs,
then restore, in that order, so every mistake is a one-line error before anything is compiled."""

from __future__ import annotations

from typing import NamedTuple

from jaxdiff.drivers import config_checks
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint
from jaxdiff.training.state import TrainState


class OpenCheckpoint(NamedTuple):
    """The latest checkpoint of ``workdir`` (an ``epath.Path``): its ``step``, the Orbax ``manager``
    (read-only) and the ``experiment`` of its config and data shape; nothing restored yet."""

    workdir: object
    step: int
    manager: object
    experiment: Experiment


def open_latest(config, workdir, mode: str) -> OpenCheckpoint:
    """Validate ``config`` and open the latest checkpoint in ``workdir`` for ``--mode=mode``.

    Raises :class:`~jaxdiff.drivers.config_checks.ConfigError` for a bad config or an unwritable work
    directory and :class:`~jaxdiff.training.checkpoint.CheckpointError` when there is no checkpoint
    (saying how to make one) or its metadata cannot be read."""
    config_checks.validate(config)
    if not workdir:
        raise config_checks.ConfigError("--workdir is required")
    directory = checkpoint.checkpoint_dir(workdir)
    step = None
    if directory.exists():
        mngr = checkpoint.manager(workdir, read_only=True)
        step = mngr.latest_step()
    if step is None:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {directory}: train first with --mode=train and the same --config and "
            f"--workdir, then run --mode={mode}")
    workdir = config_checks.check_workdir(workdir)
    meta = checkpoint.read_meta(mngr, step)
    return OpenCheckpoint(workdir, int(step), mngr, Experiment(config, meta["channels"], meta["num_classes"]))


def restore(opened: OpenCheckpoint) -> TrainState:
    """The train state of ``opened``, restored into its experiment's shapes and shardings."""
    state, _ = checkpoint.restore(opened.manager, opened.experiment.abstract_state(), opened.step)
    return state
