"""The shared helpers of the config block checks: :class:`ConfigError` and one-line checks of a
field's value (each message names the field), and :func:`check_workdir`.

Every ``drivers/*_config.py`` module checks its own block with these; ``config_checks.validate``
composes the blocks.
"""

from __future__ import annotations

import math
import uuid

from jaxdiff.common import paths


class ConfigError(ValueError):
    """A configuration value or the work directory cannot be used."""


def choice(value, choices, field):
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(str, choices))}")


def positive(value, field, allow_zero=False):
    if not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def number(value, field, low=None, high=None, low_open=False, high_open=False):
    """``value`` must be a finite real number in the interval ``low .. high`` (ends open or closed)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        bounds = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                  f"{'inf' if high is None else high}{')' if high_open else ']'}")
        raise ConfigError(f"{field} must be a number in {bounds}, got {value!r}")


def boolean(value, field):
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be True or False, got {value!r}")


def positive_ints(value, field, allow_empty=False):
    if (not isinstance(value, (tuple, list)) or (not value and not allow_empty)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{field} must be a {'' if allow_empty else 'non-empty '}tuple of positive integers, "
                          f"got {value!r}")


def name(value, field):
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field} must be a non-empty name, got {value!r}")


def path_string(value, field):
    """``value`` must be a string (a path or URL; empty allowed)."""
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a path, got {value!r}")


def library_check(fields: str, check, *args) -> None:
    """``check(*args)``, a library check in the library's terms; its ``ValueError`` as a
    :class:`ConfigError` that starts with the config ``fields`` it was given."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(f"{fields}: {e}") from None


def as_config_error(check, *args):
    """``check(*args)`` with a ``ValueError`` (already naming its config fields) as a :class:`ConfigError`."""
    try:
        return check(*args)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_workdir(workdir) -> paths.epath.Path:
    """Create ``workdir`` if needed and prove it is writable (a local folder, or a URL such as
    ``gs://bucket/run``, which stays a URL); returns it as an ``epath.Path``."""
    if not workdir:
        raise ConfigError("--workdir is required")
    path = paths.as_path(workdir)
    probe = path / f".write_test_{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"work directory {path} is not writable: {e.strerror or e}") from None
    return path
