#!/usr/bin/env bash
# Install jaxdiff into .venv (and Debian's Fashion-MNIST and tcmalloc), then train configs/fashion_mnist_cpu.py
# for 5 minutes of wall clock. Works offline except for PyPI and Debian; writes checkpoints, sample grids
# and a loss curve to runs/fashion_mnist. Re-running resumes and trains 5 more minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_fashion_mnist
make_venv .venv python3 requirements.txt
exec .venv/bin/python main.py --config=configs/fashion_mnist_cpu.py --workdir=runs/fashion_mnist \
  --config.training.max_minutes=5 "$@"
