"""The README's library example (examples/train_on_arrays.py) runs as a plain script: a user's own
float array in [-1, 1], a compiled train step, DDIM-20 samples, a PNG grid; the loss falls."""

import os
import re
import subprocess
import sys

from PIL import Image

from tests.conftest import ROOT


def test_library_example_trains_and_samples(tmp_path):
    out = tmp_path / "samples.png"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_on_arrays.py"), "--steps", "200",
                        "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout).groups())
    assert last < 0.6 * first, r.stdout
    with Image.open(out) as im:
        assert im.size[0] >= 8 * 8 and im.mode in ("L", "RGB")


def test_readme_shows_the_example_as_it_is():
    """The README's 'Use jaxdiff as a library' block is the example's marked part, line for line."""
    with open(os.path.join(ROOT, "examples", "train_on_arrays.py")) as f:
        source = f.read()
    body = source.split("# --- the example the README shows")[1].split("\n", 1)[1].split("# ------")[0]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert body.strip() in readme
