"""jaxdiff installs as a package: a wheel built from this tree, installed with its core dependencies
(no TFDS) into a fresh venv, imports from site-packages and runs the README's library example
(examples/train_on_arrays.py, set to 100 steps instead of its 300) as a plain script outside the
repository: a user's own float array in [-1, 1], a compiled train step whose loss falls, DDIM-20
samples, a PNG grid. (One run serves both: the example is the same file whether jaxdiff comes from
the checkout or from the wheel.) It runs on the newest stack only (what a user installing today gets);
the oldest pins' install is `scripts/test.sh`'s own `.venv`, which the compat tier runs in."""

import os
import re
import subprocess
import sys

from PIL import Image

from tests.conftest import ROOT
from tests.test_example import STEPS_LINE


def test_wheel_installs_into_a_fresh_venv_and_runs_the_example(tmp_path):
    run = lambda *cmd, **kw: subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # noqa: E731
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), ROOT)
    (wheel,) = dist.glob("jaxdiff-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    pins = "requirements.txt" if sys.version_info < (3, 12) else "requirements-latest.txt"
    run(python, "-m", "pip", "install", "-q", "-c", os.path.join(ROOT, pins), str(wheel))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run(python, "-c", "import jaxdiff, importlib.util; print(jaxdiff.__file__); "
                "print(importlib.util.find_spec('tensorflow_datasets') is None)", cwd=tmp_path, env=env).stdout.split()
    assert where[0].startswith(str(venv)) and "site-packages" in where[0]
    assert where[1] == "True"  # the core install works without the tfds extra
    with open(os.path.join(ROOT, "examples", "train_on_arrays.py")) as f:
        example = f.read()
    assert example.count(STEPS_LINE) == 1
    (tmp_path / "train_on_arrays.py").write_text(example.replace(STEPS_LINE, 'steps, png = 100, "samples.png"'))
    out = run(python, str(tmp_path / "train_on_arrays.py"), cwd=tmp_path, env=env, timeout=600).stdout
    assert "DDIM-20 samples" in out
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < 0.6 * first, out
    with Image.open(tmp_path / "samples.png") as im:
        assert im.size[0] >= 8 * 8 and im.mode in ("L", "RGB")
