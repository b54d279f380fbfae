"""CONTRIBUTING.md stays true: every module it names exists, every registry it names is a dict in that
module, and each worked example runs (in a fresh namespace, the registries restored afterwards) and does
what the text says: the new sampler, family, backbone, dataset reader or mode works through the library
and the config checks with no other change."""

from __future__ import annotations

import importlib
import pathlib
import re
import sys
import types

import jax
import numpy as np
import pytest

from configs import default
from jaxdiff import data
from jaxdiff.core import families, processes
from jaxdiff.core.sampler import run_sampler
from jaxdiff.core.sampler_registry import SAMPLERS, make_sampler
from jaxdiff.drivers import config_checks, data_config, sampling_config
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.drivers.sampling_config import sampler_from_config
from tests import gaussian, test_registries
from tests.conftest import set_fields, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = (ROOT / "CONTRIBUTING.md").read_text()
MU, S = 0.3, 0.5
PRIOR = gaussian.isotropic(np.full((4, 4, 1), MU), S)


def sections() -> dict:
    """``## heading -> [python code blocks]``."""
    out = {}
    for part in re.split(r"^## ", TEXT, flags=re.M)[1:]:
        heading, body = part.split("\n", 1)
        out[heading.strip()] = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return out


def registry_rows():
    """``(registry name, module path)`` of the table's "registered in" column."""
    table = "\n".join(line for line in TEXT.splitlines() if line.startswith("|"))
    return re.findall(r"`([A-Z_]+)` in `(jaxdiff/[\w/]+)\.py`", table)


@pytest.fixture
def registries():
    """Every registry the examples may extend, restored after the test."""
    dicts = [importlib.import_module(path.replace("/", ".")).__dict__[name] for name, path in registry_rows()]
    saved = [dict(d) for d in dicts]
    yield
    for d, s in zip(dicts, saved):
        d.clear()
        d.update(s)


def run_example(heading: str) -> dict:
    """The code of ``## heading`` run as a module of its own (as a contributor's file would be)."""
    blocks = sections()[heading]
    assert blocks, f"CONTRIBUTING.md has no code under ## {heading}"
    module = types.ModuleType("contributing_example")
    sys.modules[module.__name__] = module  # dataclasses (Flax modules) look their module up
    try:
        for block in blocks:
            exec(compile(block, f"CONTRIBUTING.md ({heading})", "exec"), module.__dict__)  # noqa: S102 (our docs)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def test_every_path_and_registry_it_names_exists():
    for path in set(re.findall(r"`(jaxdiff/[\w/]+\.py)`", TEXT)):
        assert (ROOT / path).is_file(), path
    rows = registry_rows()
    assert len(rows) >= 5
    for name, path in rows:
        assert isinstance(getattr(importlib.import_module(path.replace("/", ".")), name), dict), (name, path)


def moments_of(family, sampler, process=None, n=4000, seed=0):
    key = jax.random.PRNGKey(seed)
    x_T = sampler.prior_scale * jax.random.normal(jax.random.fold_in(key, 1), (n, *PRIOR.shape))
    out = run_sampler(sampler, gaussian.exact_net(family, PRIOR, process), x_T, key).samples
    return float(np.mean(out)), float(np.var(out))


def test_the_sampler_example(registries):
    run_example("A sampler")
    family = families.edm()
    mean, var = moments_of(family, make_sampler(family, "renoise", 12, clip_x0=False))
    # renoising the exact posterior mean keeps the data's mean; its variance shrinks (a posterior mean is not
    # the consistency function, the ODE's flow map), but never grows past the data's
    assert abs(mean - MU) < 0.03 and 0.0 < var < S ** 2, (mean, var)
    config = default.get_config()
    config.diffusion.family, config.sampling.sampler = "flow", "renoise"
    config_checks.validate(config)  # the command line accepts it, with no other change
    assert any(row.startswith("| `renoise` | all |") for row in test_registries.sampler_table())
    assert "renoise" in SAMPLERS


def test_the_family_example(registries):
    run_example("A diffusion family")
    config = default.get_config()
    config.diffusion.family = "flow_shift3"
    config_checks.validate(config)
    family = family_from_config(config.diffusion)
    assert family.name == "flow_shift3"
    np.testing.assert_allclose(family.grid(4, "uniform").time, [1.0, 0.9, 0.75, 0.5, 0.0])  # shift 3: 3t/(1+2t)
    config.sampling.num_steps, config.sampling.clip_x0 = 200, False  # Euler: first order
    mean, var = moments_of(family, sampler_from_config(family, config.sampling), processes.linear_interpolant())
    assert abs(mean - MU) < 0.03 and abs(var / S ** 2 - 1) < 0.05, (mean, var)


def test_the_backbone_example(registries):
    namespace = run_example("A backbone")
    config = tiny_config(**{"model.backbone": "conv", "model.ch": 8, "diffusion.family": "flow"})
    config_checks.validate(config)
    experiment = Experiment(config, channels=1, num_classes=10)
    assert isinstance(experiment.model, namespace["ConvDenoiser"])
    stream = data.batch_stream(data_config.load_source(config.data), config.seed, 0, config.training.batch_size)
    state, losses = experiment.init(), []
    for _ in range(40):
        state, metrics = experiment.step(state, next(stream))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    config.sampling.num_steps = 4
    out = sampling_config.generate_from_config(experiment.apply_fn, state.ema_params, experiment.family,
                                               config.sampling, (4, *experiment.image_shape), jax.random.PRNGKey(0),
                                               num_classes=experiment.model.num_classes)
    assert np.all(np.isfinite(out.samples)) and out.samples.shape == (4, *experiment.image_shape)
    with pytest.raises(config_checks.ConfigError, match="model.backbone='conv'"):
        config_checks.validate(set_fields(tiny_config(**{"model.backbone": "conv"}), {"model.init_from": "."}))


def test_the_dataset_reader_example(registries):
    run_example("A dataset reader")
    config = tiny_config(**{"data.dataset": "stripes", "data.image_size": 8, "data.random_flip": False})
    config_checks.validate(config, ("data",))
    source = data_config.load_source(config.data, "train")
    assert source.image_shape == (8, 8, 1) and source.num_classes == 2 and len(source) == 256
    images, labels = source[np.arange(4)]
    assert images.dtype == np.uint8 and set(np.unique(images)) <= {0, 255}


def test_the_mode_example(registries, trained_tiny):
    run_example("A command-line mode")
    from jaxdiff.drivers.modes import MODES

    workdir, _ = trained_tiny
    line = MODES["count_params"].run(tiny_config(), str(workdir), ())
    count = int(re.match(r"([\d,]+) parameters in checkpoint", line).group(1).replace(",", ""))
    assert count > 1000, line
