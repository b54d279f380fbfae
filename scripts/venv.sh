# Sourced by the other scripts: create .venv (installing Debian's venv support if needed) and
# install the pinned runtime requirements into it.
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q -r requirements.txt
