# Sourced by the other scripts. make_venv DIR PYTHON PINS: create DIR with PYTHON (installing Debian's
# venv support if needed) and install jaxdiff into it, editable, with the tfds extra and the exact
# versions of PINS. Also installs Debian's tcmalloc, which main.py runs under (jaxdiff/common/
# cpu_tuning.py: 1.3x faster CPU training steps; main.py also works without it).
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
have_tcmalloc() { /sbin/ldconfig -p 2>/dev/null | grep libtcmalloc_minimal >/dev/null; }
if ! have_tcmalloc; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libtcmalloc-minimal4 \
    || echo "warning: could not install libtcmalloc-minimal4; main.py runs with glibc malloc (slower on CPU)" >&2
fi
# install_fashion_mnist: Debian's dataset-fashion-mnist (idx files in /usr/share/datasets/fashion-mnist).
install_fashion_mnist() {
  if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
  fi
}
make_venv() {
  local dir=$1 python=$2 pins=$3
  if [ ! -x "$dir/bin/python" ]; then
    if ! "$python" -m venv "$dir" 2>/dev/null; then
      rm -rf "$dir"
      $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
      "$python" -m venv "$dir"
    fi
  fi
  "$dir/bin/python" -m pip install -q -r "$pins" -e ".[tfds]"
}
# find_python 3.12 3.13: the first of those interpreters on PATH or under pyenv that runs, or nothing.
find_python() {
  local v candidate
  for v in "$@"; do
    for candidate in "python$v" "$(pyenv root 2>/dev/null)/versions/$v"*/bin/"python$v"; do
      if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' 2>/dev/null; then
        command -v "$candidate"
        return 0
      fi
    done
  done
  return 1
}
