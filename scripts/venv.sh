# Sourced by the other scripts: create .venv (installing Debian's venv support if needed), install
# the pinned runtime requirements into it, and Debian's tcmalloc, which main.py runs under
# (jaxdiff/cpu_tuning.py: 1.3x faster CPU training steps; main.py also works without it).
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
have_tcmalloc() { /sbin/ldconfig -p 2>/dev/null | grep libtcmalloc_minimal >/dev/null; }
if ! have_tcmalloc; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libtcmalloc-minimal4 \
    || echo "warning: could not install libtcmalloc-minimal4; main.py runs with glibc malloc (slower on CPU)" >&2
fi
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q -r requirements.txt
