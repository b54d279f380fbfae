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
    ec = config.edit
    choice(ec.task, EDIT_TASKS, "edit.task")
    methods = {"inpaint": INPAINT_METHODS, "restore": restoration.METHODS}.get(ec.task, ())
    if ec.method != "auto" and ec.method not in methods:
        raise ConfigError(f"edit.method={ec.method!r} does not fit edit.task={ec.task!r}; choose "
                          + (f"auto, {', '.join(methods)}" if methods else "auto (this task has no method)"))
    choice(ec.operator, operators.OPERATORS[:-1], "edit.operator")
    mask = str(ec.mask)
    if mask not in EDIT_MASKS and not paths.as_path(mask).exists():
        box = mask[4:].split(",") if mask.startswith("box:") else []
        if len(box) != 4 or not all(v.strip().lstrip("-").isdigit() for v in box):
            raise ConfigError(f"edit.mask={ec.mask!r} is not {', '.join(EDIT_MASKS)}, box:y0,x0,h,w or an existing "
                              "PNG / .npy file")
    if not isinstance(ec.input, str) or not ec.input:
        raise ConfigError(f"edit.input must be 'dataset', 'noise' or a path, got {ec.input!r}")
    if ec.input == "noise" and ec.task != "interpolate":
        raise ConfigError(f"edit.input=noise is for edit.task=interpolate; edit.task={ec.task} needs images")
    positive(ec.num_images, "edit.num_images")
    if ec.task == "interpolate" and ec.num_images < 2:
        raise ConfigError(f"edit.task=interpolate needs edit.num_images >= 2 (pairs of images), got {ec.num_images}")
    positive(ec.samples_per_image, "edit.samples_per_image")
    positive(ec.jump_length, "edit.jump_length")
    positive(ec.jump_n_sample, "edit.jump_n_sample")
    positive(ec.interpolation_points, "edit.interpolation_points")
    if ec.interpolation_points < 2:
        raise ConfigError(f"edit.interpolation_points must be at least 2, got {ec.interpolation_points}")
    number(ec.operator_scale, "edit.operator_scale", 0.0)
    number(ec.measurement_noise, "edit.measurement_noise", 0.0)
    number(ec.strength, "edit.strength", 0.0, 1.0)
    number(ec.dps_scale, "edit.dps_scale", 0.0)
    if ec.task == "restore" and ec.method == "ddnm" and ec.measurement_noise > 0:
        raise ConfigError("edit.method=ddnm is for noiseless measurements (DDNM+'s noise handling is not built); "
                          "use edit.method=dps with edit.measurement_noise > 0")
    if not isinstance(ec.labels, str):
        raise ConfigError(f"edit.labels must be auto, none or comma-separated class ids, got {ec.labels!r}")
