"""The README's library example (examples/train_on_arrays.py's marked part) runs as printed: the block
defines everything it uses. Here with 15 training steps instead of 300 (the loss starts to fall);
the whole script, from an installed wheel, runs in tests/test_wheel.py."""

import os

import numpy as np

from tests.conftest import ROOT

STEPS_LINE = 'steps, png = 300, "samples.png"'  # the block's first statement after its imports


def readme_example() -> str:
    """The Python block under 'Use jaxdiff as a library' in README.md."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Use jaxdiff as a library"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_shows_the_example_as_it_is():
    """The README's 'Use jaxdiff as a library' block is the example's marked part, line for line."""
    with open(os.path.join(ROOT, "examples", "train_on_arrays.py")) as f:
        source = f.read()
    body = source.split("# --- the example the README shows")[1].split("\n", 1)[1].split("# ------")[0]
    assert body.strip() == readme_example().strip()


def test_the_readme_example_runs_as_printed(tmp_path, monkeypatch):
    code = readme_example()
    assert code.count(STEPS_LINE) == 1, "the block no longer sets its steps in one line"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(code.replace(STEPS_LINE, 'steps, png = 15, "samples.png"'), "README.md", "exec"), namespace)
    losses = namespace["losses"]
    assert int(namespace["state"].step) == len(losses) == 15
    assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert namespace["out"].samples.shape == (64, 8, 8, 1)
    assert (tmp_path / "samples.png").stat().st_size > 0
