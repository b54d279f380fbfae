#!/usr/bin/env bash
# Install jaxdiff, its test requirements, Debian's full Fashion-MNIST and tcmalloc, then run the test
# suite in two tiers: the whole suite on Python 3.12+ with the newest releases of JAX, Flax, Optax and
# Orbax (requirements-latest.txt, .venv-latest: what a user installing today gets), and the `compat`
# tests (what differs between JAX versions: pytest -m compat) on Python 3.11 with the oldest pinned
# stack (requirements.txt, .venv). Each tier prints its 15 slowest tests and its time. Extra arguments
# go to pytest (both tiers). JAXDIFF_FULL_ON_OLDEST=1 runs the whole suite on Python 3.11 too.
# On a machine without Python 3.12 or 3.13 the whole suite runs on Python 3.11 (an error under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
start=$SECONDS
PYTEST=(-m pytest -q -n 2 --dist loadgroup --durations=15 --durations-min=1)

make_test_venv() {  # make_test_venv DIR PYTHON PINS: scripts/venv.sh's make_venv plus the test requirements
  make_venv "$@" && "$1/bin/python" -m pip install -q -r requirements-test.txt
}

run_tier() {  # run_tier VENV LABEL PYTEST-ARGS...: one tier, with its time
  local venv=$1 label=$2 t0=$SECONDS
  shift 2
  echo "== $label: tests on $("$venv/bin/python" --version) (jax $("$venv/bin/python" -c 'import jax; print(jax.__version__)'))"
  "$venv/bin/python" "${PYTEST[@]}" "$@"
  echo "== $label: $((SECONDS - t0)) s"
}

install_fashion_mnist
# The tests' persistent XLA compilation cache (tests/conftest.py) is kept between runs; past 2 GB it starts over.
cache=${JAX_COMPILATION_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jaxdiff/xla-tests}
if [ -d "$cache" ] && [ "$(du -sm "$cache" | cut -f1)" -gt 2048 ]; then rm -rf "$cache"; fi
if latest=$(find_python 3.12 3.13); then
  make_test_venv .venv-latest "$latest" requirements-latest.txt
  echo "== installs of .venv-latest: $((SECONDS - start)) s"
  # .venv installs while the first tier runs (pip waits on the network and the disk more than the CPU)
  make_test_venv .venv python3 requirements.txt > .venv-install.log 2>&1 &
  installing=$!
  run_tier .venv-latest "whole suite, requirements-latest.txt" tests "$@"
  if ! wait $installing; then
    cat .venv-install.log >&2
    echo "error: installing .venv (Python 3.11, requirements.txt) failed" >&2
    exit 1
  fi
  if [ "${JAXDIFF_FULL_ON_OLDEST:-}" = 1 ]; then
    run_tier .venv "whole suite, requirements.txt" tests "$@"
  else
    run_tier .venv "compat tier, requirements.txt" -m compat tests "$@"
  fi
elif [ "${CI:-}" = true ]; then
  echo "error: no Python 3.12 or 3.13 found: the suite on current JAX cannot run" >&2
  exit 1
else
  echo "warning: no Python 3.12 or 3.13 found: the whole suite runs on $(python3 --version) only" >&2
  make_test_venv .venv python3 requirements.txt
  run_tier .venv "whole suite, requirements.txt" tests "$@"
fi
echo "== total (installs and both tiers): $((SECONDS - start)) s"
