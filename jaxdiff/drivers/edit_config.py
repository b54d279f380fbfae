"""The ``edit`` block (``--mode=edit``: inpaint, SDEdit, restore, invert or interpolate images): its
checks, and the choices it offers (:data:`EDIT_TASKS`, :data:`INPAINT_METHODS`, :data:`EDIT_MASKS`)."""

from __future__ import annotations

from jaxdiff.common import paths
from jaxdiff.core import operators, restoration
from jaxdiff.drivers.checks import ConfigError, choice, number, positive

EDIT_TASKS = ("inpaint", "sdedit", "restore", "invert", "interpolate")
INPAINT_METHODS = ("repaint",) + restoration.METHODS
EDIT_MASKS = ("center", "left", "right", "top", "bottom", "random")  # and box:y0,x0,h,w or a file


def check(config) -> None:
    """:func:`validate_edit` when ``config`` has an ``edit`` block."""
    if "edit" in config:
        validate_edit(config)


def validate_edit(config) -> None:
    """Raise :class:`ConfigError` (one line) for an unusable ``config.edit`` block (the checks that
    need the model, such as the mask's or operator's fit to its images, follow once it is opened)."""
    e = config.edit
    choice(e.task, EDIT_TASKS, "edit.task")
    methods = {"inpaint": INPAINT_METHODS, "restore": restoration.METHODS}.get(e.task, ())
    if e.method != "auto" and e.method not in methods:
        raise ConfigError(f"edit.method={e.method!r} does not fit edit.task={e.task!r}; choose "
                          + (f"auto, {', '.join(methods)}" if methods else "auto (this task has no method)"))
    choice(e.operator, operators.OPERATORS[:-1], "edit.operator")
    mask = str(e.mask)
    if mask not in EDIT_MASKS and not paths.as_path(mask).exists():
        box = mask[4:].split(",") if mask.startswith("box:") else []
        if len(box) != 4 or not all(v.strip().lstrip("-").isdigit() for v in box):
            raise ConfigError(f"edit.mask={e.mask!r} is not {', '.join(EDIT_MASKS)}, box:y0,x0,h,w or an existing "
                              "PNG / .npy file")
    if not isinstance(e.input, str) or not e.input:
        raise ConfigError(f"edit.input must be 'dataset', 'noise' or a path, got {e.input!r}")
    if e.input == "noise" and e.task != "interpolate":
        raise ConfigError(f"edit.input=noise is for edit.task=interpolate; edit.task={e.task} needs images")
    positive(e.num_images, "edit.num_images")
    if e.task == "interpolate" and e.num_images < 2:
        raise ConfigError(f"edit.task=interpolate needs edit.num_images >= 2 (pairs of images), got {e.num_images}")
    positive(e.samples_per_image, "edit.samples_per_image")
    positive(e.jump_length, "edit.jump_length")
    positive(e.jump_n_sample, "edit.jump_n_sample")
    positive(e.interpolation_points, "edit.interpolation_points")
    if e.interpolation_points < 2:
        raise ConfigError(f"edit.interpolation_points must be at least 2, got {e.interpolation_points}")
    number(e.operator_scale, "edit.operator_scale", 0.0)
    number(e.measurement_noise, "edit.measurement_noise", 0.0)
    number(e.strength, "edit.strength", 0.0, 1.0)
    number(e.dps_scale, "edit.dps_scale", 0.0)
    if e.task == "restore" and e.method == "ddnm" and e.measurement_noise > 0:
        raise ConfigError("edit.method=ddnm is for noiseless measurements (DDNM+'s noise handling is not built); "
                          "use edit.method=dps with edit.measurement_noise > 0")
    if not isinstance(e.labels, str):
        raise ConfigError(f"edit.labels must be auto, none or comma-separated class ids, got {e.labels!r}")
