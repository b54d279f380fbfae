#!/usr/bin/env bash
# Install jaxdiff, its test requirements, Debian's full Fashion-MNIST and tcmalloc, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
source scripts/venv.sh
if [ ! -d /usr/share/datasets/fashion-mnist ] || ! have_tcmalloc; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist libtcmalloc-minimal4
fi
.venv/bin/python -m pip install -q -r requirements-test.txt
exec .venv/bin/python -m pytest -q -n 2 tests "$@"
