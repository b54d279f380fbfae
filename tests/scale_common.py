"""The configuration shared by the scale-out tests and their subprocess workers (one config, so the
persistent compilation cache serves the same programs to the pytest process and the subprocesses)."""

from tests.conftest import tiny_config

# adam_eps=1e-3: Adam divides by sqrt(v) + eps, so with eps=1e-8 a parameter whose gradient is ~0
# (biases feeding zero-initialised layers) turns float rounding of ~1e-9 into an update of ~lr.
# A larger eps keeps the update linear in the gradient, so runs that differ only in summation order
# (8 devices vs 1, micro-batches vs one batch) agree to ~1e-7 instead of ~1e-4 (measured).
SCALE = {"model.class_conditional": True, "training.adam_eps": 1e-3, "training.warmup_steps": 0,
         "training.checkpoint_every": 1000, "sampling.num_samples": 4, "sampling.trajectory_every": 0}


def scale_config(**overrides):
    """``tiny_config`` with :data:`SCALE` and ``overrides`` (dotted keys) applied."""
    return tiny_config(**{**SCALE, **overrides})


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main_flags(config) -> list[str]:
    """``main.py`` flags that rebuild ``config`` from ``configs/digits.py``."""
    from configs import digits

    base = _flatten(digits.get_config())
    flags = ["--config=configs/digits.py"]
    for key, value in _flatten(config).items():
        if base[key] != value:
            text = f"({','.join(map(str, value))},)" if isinstance(value, tuple) else str(value)
            flags.append(f"--config.{key}={text}")
    return flags
