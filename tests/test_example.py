"""The README shows the library example (examples/train_on_arrays.py) as it is. (The example itself runs,
and its loss falls, in tests/test_wheel.py, from the installed wheel.)"""

import os

from tests.conftest import ROOT


def test_readme_shows_the_example_as_it_is():
    """The README's 'Use jaxdiff as a library' block is the example's marked part, line for line."""
    with open(os.path.join(ROOT, "examples", "train_on_arrays.py")) as f:
        source = f.read()
    body = source.split("# --- the example the README shows")[1].split("\n", 1)[1].split("# ------")[0]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert body.strip() in readme
