"""The registries are the one place where a family, a sampler or a backbone is named: nothing else compares
those names to strings, the README's sampler table is the registry's, every family's defaults build a
sampler, and the old module paths still work (with a deprecation warning) for one release."""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
import warnings

import pytest

import configs.default
from jaxdiff.core import families, grid_samplers, sampler_registry
from jaxdiff.core.families import FAMILIES
from jaxdiff.core.sampler_registry import SAMPLERS

ROOT = pathlib.Path(__file__).resolve().parents[1]
REGISTRIES = {"jaxdiff/core/families.py", "jaxdiff/core/sampler_registry.py", "jaxdiff/models/backbones.py"}
# processes.py compares *prediction* kinds ("flow": the velocity), which share a word with a family name
OTHER_MEANINGS = {"jaxdiff/core/processes.py"}


def backbone_names() -> set:
    from jaxdiff.models.backbones import BACKBONES
    return set(BACKBONES)


def compared_strings(tree: ast.AST):
    """``(line, string)`` of every string constant on either side of a comparison (``==``, ``in (...)``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                elements = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else (side,)
                for e in elements:
                    if isinstance(e, ast.Constant) and isinstance(e.value, str):
                        yield node.lineno, e.value


def test_the_checker_sees_a_comparison():
    tree = ast.parse("if family.name == 'edm' or name in ('heun', 'x'):\n    pass\n")
    assert sorted(s for _, s in compared_strings(tree)) == ["edm", "heun", "x"]


def test_no_family_sampler_or_backbone_name_is_compared_outside_its_registry():
    names = set(FAMILIES) | set(SAMPLERS) | backbone_names()
    found = []
    for path in sorted((ROOT / "jaxdiff").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in REGISTRIES | OTHER_MEANINGS:
            continue
        found += [f"{rel}:{line}: {value!r}" for line, value in compared_strings(ast.parse(path.read_text()))
                  if value in names]
    assert not found, "names compared outside their registry:\n" + "\n".join(found)


def family_of(name: str) -> families.Family:
    record = configs.default.get_config().diffusion.to_dict()
    return families.from_record({**record, "family": name, "target": "auto"})


def sampler_table() -> list[str]:
    """The README's sampler table, from :data:`SAMPLERS` (which families each fits: checked, not written)."""
    built = {name: family_of(name) for name in FAMILIES}
    rows = ["| `sampling.sampler` | families | network evaluations for `N` steps | what |", "|---|---|---|---|"]
    for name, spec in SAMPLERS.items():
        fits = []
        for family_name, family in built.items():
            try:
                sampler_registry.check_sampler_fits(family, name)
                fits.append(family_name)
            except ValueError:
                pass
        rows.append(f"| `{name}` | {', '.join(fits) if len(fits) < len(built) else 'all'} | "
                    f"`{spec.evaluations}` | {spec.summary} |")
    return rows


def test_the_readme_sampler_table_is_the_registry():
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index("| `sampling.sampler` | families | network evaluations for `N` steps | what |")
    end = next(i for i in range(start, len(readme)) if not readme[i].startswith("|"))
    expected = sampler_table()
    assert readme[start:end] == expected, "README.md's sampler table should read:\n" + "\n".join(expected)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_default_builds_its_sampler(name):
    """``sampler=auto``, ``num_steps=0`` and ``spacing=auto`` on each family: a sampler, NumPy only."""
    spec, family = FAMILIES[name], family_of(name)
    assert family.name == name and family.prediction == spec.targets[0]
    assert spec.spacing in spec.spacings and spec.sampler in SAMPLERS
    sampler = sampler_registry.make_sampler(family, spec.sampler, spec.num_steps)
    expected_steps = spec.num_steps or family.tables.num_timesteps
    assert len(sampler.timesteps) == expected_steps


@pytest.mark.parametrize("old, new", [("jaxdiff.core.samplers", ("jaxdiff.core.sampler", "run_sampler")),
                                      ("jaxdiff.core.samplers", ("jaxdiff.core.spacing", "spaced_timesteps")),
                                      ("jaxdiff.core.solvers", ("jaxdiff.core.sampler_registry", "make_sampler")),
                                      ("jaxdiff.core.solvers", ("jaxdiff.core.grid_samplers", "heun_sampler"))])
def test_old_module_paths_work_for_one_release_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, new[1]) is getattr(importlib.import_module(new[0]), new[1])


def test_the_library_imports_no_deprecated_module():
    """The package itself never goes through a deprecation shim (a fresh interpreter, warnings as errors)."""
    import subprocess
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning); "
            "import jaxdiff, jaxdiff.drivers.train_loop, jaxdiff.drivers.sample_mode, jaxdiff.drivers.edit_mode, "
            "jaxdiff.drivers.eval_mode, jaxdiff.drivers.export_mode")
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:jaxdiff", "-c", code], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_heun_with_churn_is_the_stochastic_sampler_with_a_warning():
    family = family_of("edm")
    grid = family.grid(6, "karras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = grid_samplers.heun_sampler(family, grid, churn=2.0)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    new = grid_samplers.edm_stochastic_sampler(family, grid, churn=2.0)
    assert old.evaluations == new.evaluations and list(old.timesteps) == list(new.timesteps)
