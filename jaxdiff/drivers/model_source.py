"""Which network a run uses, and the config that network needs.

A work directory's own checkpoint comes first: it records the config it was trained with, and
``model.downsample_padding=auto`` takes the padding it recorded (``symmetric`` when it predates the
field, as jaxdiff < 0.4 trained). Otherwise ``model.init_from`` names a network to start from (train
mode) or to use (sample and eval mode): a diffusers ``UNet2DModel`` folder or another jaxdiff work
directory; its architecture and diffusion process replace the config's (each changed field said in one
line), and its EMA weights are the parameters. Every mismatch is a one-line
:class:`~jaxdiff.drivers.checks.ConfigError` before anything is compiled.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import jax
import ml_collections

from jaxdiff.common import parallel
from jaxdiff.core import families
from jaxdiff.drivers.checks import ConfigError
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.interop import diffusers_scheduler, diffusers_unet
from jaxdiff.models import backbones
from jaxdiff.models.backbones import BACKBONES
from jaxdiff.models.unet import architecture
from jaxdiff.training import checkpoint

# The config.model fields that describe the networks a model.init_from source builds (U-Nets: what a
# source sets; dropout, remat and init_from are how it is trained, and stay the config's), and the
# config.diffusion fields of the process.
ARCHITECTURE = (*dict.fromkeys(n for b in BACKBONES.values() if b.init_from for n in b.architecture_fields),
                "class_conditional")
PROCESS = ("family", "num_timesteps", "schedule", "beta_start", "beta_end", "scale_betas_to_t", "zero_terminal_snr",
           "target", "edm", "flow")  # what an export's jaxdiff.json records (interop/process_file.FIELDS)
# The blocks that also define a few-step family's function (its boundary sigma_min, TrigFlow's sigma_data),
# recorded by checkpoints (an export refuses these families); diffusion.meanflow, .shortcut: how it is trained
FEW_STEP_PROCESS = ("consistency", "scm")
# Every backbone's architecture fields (BACKBONES: under model, or a block of its own such as model.dit).
_BACKBONE_FIELDS = tuple(dict.fromkeys(f"{b.config_block}.{n}" for b in BACKBONES.values()
                                       for n in b.architecture_fields))
# What defines the function a checkpoint computes: every later run of its work directory (resume,
# sample, eval, edit, export) takes these from the checkpoint's recorded config (blocks: every field).
DEFINING = ("model.backbone", *(f for f in _BACKBONE_FIELDS if f.count(".") == 1), "model.class_conditional",
            *(f for f in _BACKBONE_FIELDS if f.count(".") > 1),
            *(f"diffusion.{n}" for n in PROCESS + FEW_STEP_PROCESS),
            "data.image_size", "latent.autoencoder")
# Fields that checkpoints of older jaxdiff versions predate, with the value those versions trained with.
PREDATED = {"model.downsample_padding": "symmetric", "model.backbone": backbones.ORIGINAL}
_ABSENT = object()


class LatestCheckpoint(NamedTuple):
    """The latest checkpoint of a work directory: its read-only Orbax ``manager``, ``step`` and ``meta``
    (the JSON item: ``config``, ``channels``, ``num_classes``)."""

    manager: object
    step: int
    meta: dict


class ModelSource(NamedTuple):
    """A network named by ``model.init_from``: ``kind`` (``diffusers`` or ``workdir``), ``path``, the
    ``model`` and ``diffusion`` config fields it was built and trained with (``diffusion`` None: a
    diffusers folder without a scheduler), ``image_size``, ``channels``, ``num_classes``, and
    ``load_params(use_ema) -> params`` (host arrays; a diffusers folder has one set of weights)."""

    kind: str
    path: str
    model: dict
    diffusion: dict | None
    image_size: int
    channels: int
    num_classes: int
    load_params: Callable[[bool], dict]


def latest_checkpoint(workdir) -> LatestCheckpoint | None:
    """The latest checkpoint in ``workdir`` (a folder or URL), or None when it has none."""
    if not workdir or not checkpoint.checkpoint_dir(workdir).exists():
        return None
    mngr = checkpoint.manager(workdir, read_only=True)
    step = mngr.latest_step()
    if step is None:
        mngr.close()
        return None
    return LatestCheckpoint(mngr, int(step), checkpoint.read_meta(mngr, step))


def check_kind(latest: LatestCheckpoint | None, kind: str, workdir) -> None:
    """Raise :class:`ConfigError` when the checkpoint of ``workdir`` holds another kind of model than
    ``kind`` (``diffusion``, or ``autoencoder`` from ``--mode=train_autoencoder``)."""
    held = latest.meta.get("kind", "diffusion") if latest is not None else kind
    if held != kind:
        mode = "--mode=train_autoencoder" if held == "autoencoder" else "--mode=train"
        article = "an" if held[0] in "aeiou" else "a"
        raise ConfigError(f"{workdir} holds {article} {held} checkpoint (made by {mode}), not a {kind} one: use "
                          "another --workdir")


def _diffusers_source(path: str) -> ModelSource:
    """The network of a diffusers folder and its process: that of ``jaxdiff.json`` when the folder has one
    (a jaxdiff export: every family, exactly), else that of its DDPM-type ``scheduler_config.json``, else
    None (the config's is assumed)."""
    try:
        model = diffusers_unet.read_folder(path)
        if model.process is not None:
            diffusion = model.process
        elif model.scheduler is not None:
            diffusion = diffusers_scheduler.diffusion_settings(model.scheduler)[0]
        else:
            diffusion = None
    except diffusers_unet.WeightsError as e:
        raise ConfigError(f"model.init_from: {e}") from None
    return ModelSource("diffusers", path, architecture(model.unet), diffusion, model.image_size, model.channels,
                       model.unet.num_classes, lambda use_ema: model.params)


def overlay_recorded(config, recorded: dict, paths) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the values a checkpoint's recorded config (``meta["config"]``, JSON) has at
    ``paths`` (dotted fields; a block: every field of it the config has), said nowhere: the config of a
    checkpoint read to restore it (an ``init_from`` work directory, a latent space's autoencoder)."""
    return take_values(config, recorded_values(recorded, paths), "the checkpoint", log=lambda *_: None)


def with_checkpoint_config(config, recorded: dict) -> ml_collections.ConfigDict:
    """``config`` with the fields a checkpoint's recorded config (``meta["config"]``) has for the
    network, its process and its optimiser (so its train state restores), and the data's image size."""
    out = overlay_recorded(config, recorded, (*(f"model.{n}" for n in ARCHITECTURE),
                                              *(f"diffusion.{n}" for n in PROCESS + FEW_STEP_PROCESS), "training",
                                              "data.image_size"))
    out.model.downsample_padding = recorded.get("model", {}).get("downsample_padding", "symmetric")
    return out


def _workdir_source(config, path: str) -> ModelSource:
    latest = latest_checkpoint(path)
    if latest is None:
        raise ConfigError(f"model.init_from={path!r} is neither a diffusers folder (config.json) nor a jaxdiff "
                          "work directory with a checkpoint")
    if latest.meta.get("kind", "diffusion") != "diffusion" or latest.meta.get("latent"):
        latest.manager.close()
        what = "a latent diffusion model" if latest.meta.get("latent") else "an autoencoder"
        raise ConfigError(f"model.init_from={path!r} holds {what}: init_from takes pixel-space diffusion models")
    source_config = with_checkpoint_config(config, latest.meta["config"])
    source_config.model.init_from = ""
    channels, num_classes = int(latest.meta["channels"]), int(latest.meta["num_classes"])

    def load_params(use_ema: bool) -> dict:
        experiment = Experiment(source_config, channels, num_classes)
        state, _ = checkpoint.restore(latest.manager, experiment.abstract_state(), latest.step)
        latest.manager.close()
        return jax.tree.map(parallel.to_host, state.ema_params if use_ema else state.params)

    model = {name: source_config.model[name] for name in ARCHITECTURE}
    diffusion = {name: source_config.diffusion[name] for name in PROCESS}
    return ModelSource("workdir", path, model, diffusion, int(source_config.data.image_size), channels,
                       num_classes if model["class_conditional"] else 0, load_params)


def open_source(config) -> ModelSource | None:
    """The network ``config.model.init_from`` names (None when empty), its weights not yet read for a
    work directory; a diffusers folder's are read and checked here."""
    path = config.model.init_from
    if not path:
        return None
    if diffusers_unet.is_diffusers_folder(path):
        return _diffusers_source(path)
    return _workdir_source(config, path)


def _plain(value):
    """A config or JSON value in one comparable form: lists as tuples, ConfigDicts as dicts."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _leaves(path: str, value):
    """``(dotted path, value)`` for every leaf of a JSON value (a block is its fields)."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _leaves(f"{path}.{name}", item)
    else:
        yield path, _plain(value)


def recorded_values(recorded: dict, paths, predated: dict | None = None) -> dict:
    """``{dotted field: value}`` of a recorded config (``meta["config"]``, JSON) at ``paths``, blocks
    flattened to their fields, lists as tuples; a path it lacks takes ``predated[path]`` when given."""
    out = {}
    for path in paths:
        node = recorded
        for part in path.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        node = (predated or {}).get(path, _ABSENT) if node is _ABSENT else node
        if node is not _ABSENT:
            out.update(_leaves(path, node))
    return out


def defining_values(recorded: dict) -> dict:
    """``{dotted field: value}`` for every :data:`DEFINING` field a recorded config has; a field older
    checkpoints predate takes the value they were trained with (:data:`PREDATED`)."""
    return recorded_values(recorded, DEFINING, PREDATED)


def source_values(source: ModelSource) -> dict:
    """``{dotted field: value}`` of the network and process a ``model.init_from`` source was built with."""
    return dict(_leaves("model", source.model)) | dict(_leaves("diffusion", source.diffusion or {}))


def take_values(config, values: dict, what: str, overrides=(), log=print) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``values`` (``{dotted field: value}``, those of ``what``: a checkpoint or
    a ``model.init_from`` source) in place of its own; fields the config lacks are skipped.

    A replaced value is said in one ``log`` line; one that the user set on the command line
    (``overrides``: the dotted fields of ``--config.FIELD=...`` flags) is a :class:`ConfigError` naming
    the field, ``what``'s value and the given one, since the run would not be what was asked."""
    out = copy.deepcopy(config)
    changed = []
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            continue
        given = _plain(node[leaf])
        if given == value:
            continue
        if any(path == o or path.startswith(f"{o}.") for o in overrides):
            raise ConfigError(f"--config.{path}={given!r} but {what} has {path}={value!r}: drop the flag (that "
                              "value is used) or use another --workdir")
        node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
        if not (path == "model.downsample_padding" and given == "auto"):  # auto: whatever was recorded
            changed.append(f"{path}={value!r} (the config had {given!r})")
    if changed:
        log(f"{what} sets {', '.join(changed)}")
    return out


def configure(config, source: ModelSource | None, recorded: dict | None, log=print,
              overrides=()) -> ml_collections.ConfigDict:
    """A copy of ``config`` computing the function the run is about: with ``recorded`` (the config of
    the work directory's checkpoint) its :data:`DEFINING` fields, else with ``source`` (the network of
    ``model.init_from``, at the start of a run) its architecture and process when it has one; a new
    model's ``downsample_padding=auto`` is ``same``. A source of a family that starts the config's
    (:attr:`~jaxdiff.core.families.FamilySpec.starts_from`: a flow model, MeanFlow) keeps the config's
    family and takes the rest. Each replaced field is said in one ``log`` line;
    one set by a ``--config`` flag (``overrides``) is a :class:`ConfigError` (:func:`take_values`), as is
    a source built for another image size than ``data.image_size``."""
    out = config
    if recorded is not None:
        out = take_values(out, defining_values(recorded), "the checkpoint", overrides, log)
    elif source is not None:
        if source.image_size != config.data.image_size:
            raise ConfigError(f"data.image_size={config.data.image_size} but model.init_from={source.path!r} "
                              f"was built for {source.image_size}x{source.image_size} images")
        what = "diffusers folder" if source.kind == "diffusers" else "work directory"
        values = source_values(source)
        family, base = config.diffusion.family, values.get("diffusion.family")
        if base is not None and base != family and base in families.family_spec(family).starts_from:
            del values["diffusion.family"]  # a few-step family started from the network of its base family
            log(f"model.init_from: the {base} model starts a diffusion.family={family!r} model")
        out = take_values(out, values, f"model.init_from's {what}", overrides, log)
        log(f"model.init_from: the network of the {what} {source.path}"
            + ("" if source.diffusion is not None else "; it has neither jaxdiff.json nor scheduler_config.json: "
               "the config's diffusion settings are assumed"))
    out = copy.deepcopy(out)
    if out.model.downsample_padding == "auto":
        out.model.downsample_padding = "same"
    return out


def recorded_ema_stds(recorded: dict | None) -> tuple:
    """The ``training.ema_stds`` a checkpoint's config ``recorded`` (its state holds one EMA profile for each)."""
    return tuple((recorded or {}).get("training", {}).get("ema_stds", ()))


def resolve(config, latest: LatestCheckpoint | None, source: ModelSource | None, log=print, overrides=(),
            training: bool = False) -> ml_collections.ConfigDict:
    """The config a run computes with, built once (one copy of ``config``; every mode uses it from here on).

    :func:`configure` (the checkpoint's :data:`DEFINING` fields, or ``model.init_from``'s network and
    process), then from the checkpoint's metadata: its EMA profiles (what its state holds; a resumed
    training run must ask for the same ones, :class:`ConfigError` otherwise) and, for a latent model, the
    autoencoder and scale factor it was trained with. A new latent model's scale factor, measured from the
    data, is set on this copy later (:func:`jaxdiff.drivers.latent.encode_training_set`)."""
    recorded = latest.meta["config"] if latest is not None else None
    out = configure(config, source, recorded, log, overrides)
    if recorded is None:
        return out
    stds = recorded_ema_stds(recorded)
    if training and tuple(out.training.ema_stds) != stds:
        raise ConfigError(f"training.ema_stds={tuple(out.training.ema_stds)} but the checkpoint tracks {stds}: "
                          "resume with those, or use a new --workdir")
    out.training.ema_stds = stds
    if latest.meta.get("latent"):  # a latent diffusion model: the autoencoder and scale it was trained with
        out.latent.autoencoder = latest.meta["latent"]["autoencoder"]
        out.latent.scale_factor = latest.meta["latent"]["scale_factor"]
    return out


def check_source_fits(source: ModelSource | None, channels: int, num_classes: int) -> None:
    """Raise :class:`ConfigError` unless ``source`` was built for images of ``channels`` channels and,
    when class-conditional, for ``num_classes`` classes (the dataset's)."""
    if source is None:
        return
    if source.channels != channels:
        raise ConfigError(f"model.init_from={source.path!r} takes {source.channels}-channel images, the data "
                          f"has {channels} (set data.channels={source.channels})")
    if source.num_classes and source.num_classes != num_classes:
        raise ConfigError(f"model.init_from={source.path!r} is conditional on {source.num_classes} classes, the "
                          f"data has {num_classes}")


def check_data_fits(meta: dict, config, channels: int, num_classes: int) -> None:
    """Raise :class:`ConfigError` unless data of ``channels`` channels (a latent model's: latent
    channels) and, for a class-conditional ``config``, ``num_classes`` classes is what the checkpoint
    of ``meta`` was trained on (resuming it on other data would not fit its network)."""
    if channels != meta["channels"]:
        raise ConfigError(f"the checkpoint's network takes {meta['channels']}-channel images, the data "
                          f"({config.data.dataset}) has {channels}: set data.channels={meta['channels']} or use "
                          "another --workdir")
    if config.model.class_conditional and num_classes != meta["num_classes"]:
        raise ConfigError(f"the checkpoint's network is conditional on {meta['num_classes']} classes, the data "
                          f"({config.data.dataset}) has {num_classes}: use another --workdir")


def place(params, experiment: Experiment):
    """Host ``params`` of a source as global arrays sharded like ``experiment``'s parameters; raises
    :class:`ConfigError` if their structure or shapes are not the experiment's network's."""
    want = experiment.abstract_state().params
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)  # noqa: E731
    if jax.tree.structure(params) != jax.tree.structure(want) or shapes(params) != shapes(want):
        raise ConfigError("model.init_from's weights do not fit the network of the config")
    return jax.tree.map(lambda p, a: parallel.put_global(p, a.sharding), params, want)
