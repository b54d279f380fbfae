#!/usr/bin/env bash
# Install jaxdiff into .venv and train the quick-start model on scikit-learn's embedded digits.
# Works offline except for PyPI; writes checkpoints, sample grids and a loss curve to runs/digits.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
make_venv .venv python3 requirements.txt
exec .venv/bin/python main.py --config=configs/digits.py --workdir=runs/digits "$@"
