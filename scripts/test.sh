#!/usr/bin/env bash
# Install jaxdiff, its test requirements, Debian's full Fashion-MNIST and tcmalloc, then run the test
# suite twice: on Python 3.11 with the pinned requirements.txt (.venv), and on Python 3.12+ with the
# newest releases of JAX, Flax, Optax and Orbax, requirements-latest.txt (.venv-latest). Extra
# arguments go to pytest. On a machine without Python 3.12 or 3.13 the second run is reported as not
# run (and is an error under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_fashion_mnist
make_venv .venv python3 requirements.txt
.venv/bin/python -m pip install -q -r requirements-test.txt
echo "== tests on $(.venv/bin/python --version), requirements.txt (jax $(.venv/bin/python -c 'import jax; print(jax.__version__)'))"
.venv/bin/python -m pytest -q -n 2 tests "$@"

if latest=$(find_python 3.12 3.13); then
  make_venv .venv-latest "$latest" requirements-latest.txt
  .venv-latest/bin/python -m pip install -q -r requirements-test.txt
  echo "== tests on $(.venv-latest/bin/python --version), requirements-latest.txt (jax $(.venv-latest/bin/python -c 'import jax; print(jax.__version__)'))"
  .venv-latest/bin/python -m pytest -q -n 2 tests "$@"
elif [ "${CI:-}" = true ]; then
  echo "error: no Python 3.12 or 3.13 found: the suite on current JAX cannot run" >&2
  exit 1
else
  echo "warning: no Python 3.12 or 3.13 found: the suite on current JAX (requirements-latest.txt) was not run" >&2
fi
