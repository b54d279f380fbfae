#!/usr/bin/env bash
# Install jaxdiff, its test requirements and Debian's full Fashion-MNIST, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
source scripts/venv.sh
.venv/bin/python -m pip install -q -r requirements-test.txt
exec .venv/bin/python -m pytest -q -n 2 tests "$@"
