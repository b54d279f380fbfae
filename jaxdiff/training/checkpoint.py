"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``.

Orbax writes each step to a temporary directory and renames it when complete, so a crash or kill
during a save leaves the previous checkpoints intact and never a half-written one that looks valid;
the temporary folders such a crash leaves are removed when the next run opens the directory. A save
is waited for, so a full disk or a lost permission is one :class:`CheckpointError` at that save,
naming the checkpoint that is still intact. Each checkpoint holds the train state (step, params,
EMA params, optimizer state, power-function EMA profiles) and a JSON item with the configuration it was
trained with.

With post-hoc EMA the profiles are also snapshotted, all kept, in ``<workdir>/ema_snapshots`` (the same
atomic Orbax steps; :func:`snapshot_manager`), for :mod:`jaxdiff.training.posthoc_ema` to combine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings

import jax
import orbax.checkpoint as ocp

from jaxdiff.common import paths


class CheckpointError(RuntimeError):
    """A checkpoint is missing or cannot be restored."""


def _short(error: Exception, limit: int = 160) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters (TensorStore's carry a long spec)."""
    line = str(error).splitlines()[0] if str(error) else ""
    return line if len(line) <= limit else line[:limit] + "..."


def checkpoint_dir(workdir: paths.PathLike):
    """``<workdir>/checkpoints`` as an ``epath.Path`` (a ``gs://`` workdir stays a URL)."""
    return paths.as_path(workdir) / "checkpoints"


def snapshot_dir(workdir: paths.PathLike):
    """``<workdir>/ema_snapshots``: the post-hoc EMA snapshots."""
    return paths.as_path(workdir) / "ema_snapshots"


def manager(workdir: paths.PathLike, keep: int | None = 3, read_only: bool = False,
            directory=None) -> ocp.CheckpointManager:
    """A CheckpointManager over ``<workdir>/checkpoints`` (or ``directory``) keeping the ``keep`` newest steps
    (``None``: all) and, unless ``read_only``, removing the temporary folders of interrupted saves. A
    read-only one is opened without Orbax's warnings that it is read-only."""
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                           save_interval_steps=0 if read_only else 1,
                                           create=not read_only, read_only=read_only,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=not read_only)
    with quiet_orbax(logging.ERROR) if read_only else contextlib.nullcontext():
        return ocp.CheckpointManager(directory or checkpoint_dir(workdir),
                                     options=options, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                                     "config": ocp.JsonCheckpointHandler()})


def snapshot_manager(workdir: paths.PathLike, read_only: bool = False) -> ocp.CheckpointManager:
    """A :func:`manager` over ``<workdir>/ema_snapshots`` that keeps every step: :func:`save` writes the
    state's ``ema_profiles`` there (with ``{"ema_stds": [...]}`` as the JSON item), :func:`restore` reads them."""
    return manager(workdir, keep=None, read_only=read_only, directory=snapshot_dir(workdir))


@contextlib.contextmanager
def quiet_orbax(below: int = logging.CRITICAL):
    """Keep Orbax's own log lines under level ``below`` off the terminal (by default its ERROR lines, a
    traceback per array that failed to write, while a save runs, so that a failure is the one
    :class:`CheckpointError` line); ``JAXDIFF_DEBUG=1`` shows them."""
    logger = logging.getLogger("absl")
    level = logger.level
    if os.environ.get("JAXDIFF_DEBUG") != "1":
        logger.setLevel(below)
    try:
        yield
    finally:
        logger.setLevel(level)


class AbandonedWrites(logging.Filter):
    """Drops the reports of a failed save's abandoned writes: Orbax's own log records (its writer
    threads log each failure) and asyncio's "Task / Future exception was never retrieved" for Orbax's
    writes. After a save fails (raised once, as a :class:`CheckpointError`), the rest of its writes
    fail too and are reported one by one, long after the save, until the process exits."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname:
            return False
        text = record.getMessage()
        return not ("exception was never retrieved" in text and "orbax" in text)


def silence_abandoned_writes() -> None:
    """After a failed save: install :class:`AbandonedWrites` on the ``absl`` and ``asyncio`` loggers
    (once) and ignore the "coroutine ... was never awaited" warnings of the writes that never started
    (not with ``JAXDIFF_DEBUG=1``)."""
    if os.environ.get("JAXDIFF_DEBUG") == "1":
        return
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, AbandonedWrites) for f in logger.filters):
            logger.addFilter(AbandonedWrites())
    warnings.filterwarnings("ignore", message="coroutine 'async_serialize_from_host", category=RuntimeWarning)


def save(mngr: ocp.CheckpointManager, step: int, state, config_json: dict) -> None:
    """Save ``state`` at ``step`` and wait until it is complete on disk.

    Raises :class:`CheckpointError` (one line: why, and which checkpoint is still intact) when the
    write fails, for example on a full disk; the failed step's temporary folder is removed.
    """
    previous = mngr.latest_step()
    try:
        with quiet_orbax():
            mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    config=ocp.args.JsonSave(config_json)), force=True)
            mngr.wait_until_finished()
    except Exception as e:  # OSError, TensorStore's ValueError, ...: all mean the write failed
        silence_abandoned_writes()
        for leftover in mngr.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            leftover.rmtree(missing_ok=True)
        kept = f"checkpoint {previous} is intact" if previous is not None else "no earlier checkpoint exists"
        raise CheckpointError(f"saving checkpoint {step} in {mngr.directory} failed ({type(e).__name__}: "
                              f"{_short(e)}); {kept}. Free space or fix permissions, then re-run the same "
                              "command to resume") from e


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restore the state at ``step`` (default: the latest) into the structure/shardings of
    ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct``). Returns ``(state, config_json)``."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {mngr.directory}: train first "
                              "(python main.py --mode=train with the same --config and --workdir)")
    try:
        target, predates = _restore_target(mngr, step, abstract_state)
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged or mismatched files
        raise CheckpointError(
            f"checkpoint {step} in {mngr.directory} cannot be restored ({type(e).__name__}: "
            f"{_short(e)}). If it is damaged, delete that step's folder to "
            "fall back to the previous one; if the model config changed, use the config it was "
            "trained with or a new --workdir") from e
    state = abstract_state.replace(**restored.state) if predates else restored.state
    return state, restored.config


def _restore_target(mngr: ocp.CheckpointManager, step: int, abstract_state):
    """What to restore checkpoint ``step`` into: ``abstract_state`` itself, or, for a checkpoint older
    than a field added since with an empty default (``TrainState.ema_profiles = ()``), a dict of the
    fields it holds, whose restore :func:`restore` puts back into ``abstract_state``. Returns
    ``(target, predates)``."""
    if not dataclasses.is_dataclass(abstract_state):
        return abstract_state, False
    on_disk = mngr.item_metadata(step).state.tree
    fields = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)}
    missing = [name for name, value in fields.items() if name not in on_disk and not jax.tree.leaves(value)]
    if not missing:
        return abstract_state, False
    return {name: value for name, value in fields.items() if name not in missing}, True


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The JSON item of checkpoint ``step`` (config, channels, num_classes) without the arrays."""
    try:
        return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    except Exception as e:
        raise CheckpointError(f"checkpoint {step} in {mngr.directory} has no readable metadata "
                              f"({type(e).__name__}); delete that step's folder or use a new --workdir") from e
