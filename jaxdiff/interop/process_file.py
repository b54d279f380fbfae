"""``jaxdiff.json``: the diffusion process of an exported folder, in jaxdiff's own terms.

A diffusers scheduler config says what diffusers' samplers need, not always how the network was
trained: ``DDPMScheduler`` describes the ddpm family (but for ``sigmoid_abar``), ``EDMEulerScheduler`` and
``FlowMatchEulerDiscreteScheduler`` the sampling side of the edm and flow families (not their training
distributions), and no maintained diffusers scheduler describes continuous VP. So ``--mode=export``
writes ``jaxdiff.json`` at the folder's root, beside ``unet/``::

    {"format": 1,
     "diffusion": {"family": "edm", "target": "edm", "num_timesteps": 1000, "schedule": "linear",
                   "beta_start": 0.0001, "beta_end": 0.02, "scale_betas_to_t": false,
                   "zero_terminal_snr": false,
                   "edm": {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002,
                           "sigma_max": 80.0, "rho": 7.0},
                   "flow": {"t_sampling": "logit_normal", "loc": 0.0, "scale": 1.0, "shift": 1.0}}}

``diffusion`` holds every ``config.diffusion`` field that defines the trained function (:data:`FIELDS`,
the same as ``jaxdiff.drivers.model_source.PROCESS``), ``target`` resolved (never ``auto``); whichever
family it is, all of them are there, so reading it sets every one. Reading is strict: plain JSON
(no ``NaN`` or ``Infinity``), ``format`` 1, exactly these keys with these types, values that
``config.diffusion`` accepts, and a family that builds; anything else is a one-line
:class:`~jaxdiff.interop.safetensors_file.WeightsError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os

from jaxdiff.core import families, schedules
from jaxdiff.interop.safetensors_file import WeightsError

FILE_NAME = "jaxdiff.json"
FORMAT = 1
# The config.diffusion fields of the process and their JSON types (float: any finite number, not a bool).
SCALARS = {"family": str, "target": str, "num_timesteps": int, "schedule": str, "beta_start": float,
           "beta_end": float, "scale_betas_to_t": bool, "zero_terminal_snr": bool}
BLOCKS = {"edm": {"sigma_data": float, "p_mean": float, "p_std": float, "sigma_min": float, "sigma_max": float,
                  "rho": float},
          "flow": {"t_sampling": str, "loc": float, "scale": float, "shift": float}}
FIELDS = (*SCALARS, *BLOCKS)
MAX_TIMESTEPS = 100_000  # DDPM's tables are built on reading: a file may not ask for gigabytes
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a finite number", bool: "true or false"}


def process_fields(diffusion) -> dict:
    """The :data:`FIELDS` of a ``config.diffusion`` mapping (``target`` resolved), as plain JSON values."""
    out = {name: diffusion[name] for name in SCALARS}
    for block, names in BLOCKS.items():
        out[block] = {name: diffusion[block][name] for name in names}
    return out


def record(diffusion) -> dict:
    """The content of ``jaxdiff.json`` for a ``config.diffusion`` mapping (``target`` resolved); raises
    :class:`WeightsError` for a process :func:`check` would refuse, so nothing unreadable is written."""
    content = {"format": FORMAT, "diffusion": process_fields(diffusion)}
    return {"format": FORMAT, "diffusion": check(json.loads(json.dumps(content)), FILE_NAME)}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read(folder: str) -> dict | None:
    """The process (``config.diffusion`` fields) of ``folder``'s ``jaxdiff.json``, None when it has none."""
    path = os.path.join(folder, FILE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f, parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"cannot read {path} as JSON ({' '.join(str(e).split())})") from None
    return check(content, path)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _typed(value, kind, where: str, name: str):
    """``value`` as ``kind`` (a JSON integer taken as a float where a float is due), or a
    :class:`WeightsError` naming ``name``."""
    if kind is float:
        ok = _is_number(value)
    elif kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise WeightsError(f"{where}: {name}={value!r} must be {_TYPE_NAMES[kind]}")
    return float(value) if kind is float else value


def _fields(obj, types: dict, where: str, prefix: str) -> dict:
    """The JSON object ``obj`` with exactly the keys of ``types``, each of its type (a dict of types:
    a nested object, checked the same way)."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{where}: {prefix.rstrip('.')} must be a JSON object, got {obj!r}")
    missing, extra = [k for k in types if k not in obj], sorted(k for k in obj if k not in types)
    if missing or extra:
        what = f"lacks {prefix}{missing[0]}" if missing else f"has an unknown field {prefix}{extra[0]}"
        raise WeightsError(f"{where} {what}")
    return {k: (_fields(obj[k], kind, where, f"{prefix}{k}.") if isinstance(kind, dict)
                else _typed(obj[k], kind, where, prefix + k)) for k, kind in types.items()}


def check(content, where: str = FILE_NAME) -> dict:
    """The process ``content`` (a parsed ``jaxdiff.json``) describes, every field checked (types, then
    values as ``config.diffusion`` takes them, then the family built); :class:`WeightsError` otherwise."""
    if not isinstance(content, dict):
        raise WeightsError(f"{where} is not a JSON object")
    version = content.get("format")
    if isinstance(version, bool) or version != FORMAT:
        raise WeightsError(f"{where}: format={version!r} is not one this jaxdiff reads ({FORMAT})")
    out = _fields(content, {"format": int, "diffusion": {**SCALARS, **BLOCKS}}, where, "")["diffusion"]
    _check_values(out, where)
    return out


def _bad(where: str, name: str, value, why: str) -> WeightsError:
    return WeightsError(f"{where}: diffusion.{name}={value!r} {why}")


def _check_values(d: dict, where: str) -> None:
    """Raise :class:`WeightsError` for the first value of ``d`` that ``config.diffusion`` would refuse."""
    choices = (("family", d["family"], families.FAMILIES), ("schedule", d["schedule"], schedules.SCHEDULES),
               ("flow.t_sampling", d["flow"]["t_sampling"], families.T_SAMPLINGS))
    for name, value, allowed in choices:
        if value not in allowed:
            raise _bad(where, name, value, f"is not one of {', '.join(allowed)}")
    targets = families.FAMILIES[d["family"]].targets
    if d["target"] not in targets:
        raise _bad(where, "target", d["target"], f"does not fit family {d['family']!r} ({', '.join(targets)})")
    positive = [("num_timesteps", d["num_timesteps"])] + [(f"edm.{k}", d["edm"][k]) for k in
                                                          ("sigma_data", "sigma_min", "sigma_max", "rho", "p_std")]
    positive += [(f"flow.{k}", d["flow"][k]) for k in ("scale", "shift")]
    for name, value in positive:
        if not value > 0:
            raise _bad(where, name, value, "must be positive")
    if d["num_timesteps"] > MAX_TIMESTEPS:  # the tables are built when the file is read
        raise _bad(where, "num_timesteps", d["num_timesteps"],
                   f"is above {MAX_TIMESTEPS:,}: no trained model has that many")
    if not 0.0 < d["beta_start"] <= d["beta_end"] < 1.0:
        raise _bad(where, "beta_end", d["beta_end"], f"needs 0 < beta_start={d['beta_start']!r} <= beta_end < 1")
    if not d["edm"]["sigma_max"] > d["edm"]["sigma_min"]:
        raise _bad(where, "edm.sigma_max", d["edm"]["sigma_max"], f"must exceed sigma_min={d['edm']['sigma_min']!r}")
    try:
        build_family(d)
    except ValueError as e:
        raise WeightsError(f"{where}: {' '.join(str(e).split())}") from None


def build_family(d: dict) -> families.Family:
    """The :class:`~jaxdiff.core.families.Family` of the process ``d`` (its training weighting the
    default: ``jaxdiff.json`` records the function, not how the loss was weighted)."""
    return families.from_record(d)
