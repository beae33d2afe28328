#!/usr/bin/env bash
# Set up sre2l_jax on a fresh Debian/Ubuntu machine with Python 3.11: the Fashion-MNIST package
# (the embedded default data) and a virtual environment in .venv with the package installed.
#
#   bash launch/setup.sh          # what the main job needs
#   bash launch/setup.sh --test   # plus pytest(-xdist), ruff and PyTorch/torchvision (tests compare against them)
#
# Variables: PYTHON (default python3.11, else python3) picks the interpreter; VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
# The main job skips pip's byte-compiling of every installed module (37 → 21 s on the 2-core VM;
# Python compiles what it imports, once). The tests start many processes, so they keep it.
compile="--no-compile"
[[ "${1:-}" == "--test" ]] && extras="[test,torch]" && compile="--compile"

debs=()
[[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || debs+=(dataset-fashion-mnist)
[[ -n "$extras" ]] && ! command -v shellcheck >/dev/null && debs+=(shellcheck)  # the launch-script tests
if [[ ${#debs[@]} -gt 0 ]]; then
  sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  $sudo apt-get update -q
  $sudo apt-get install -y -q "${debs[@]}"
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), f"need Python >= 3.11, have {sys.version}"'
VENV="${VENV:-.venv}"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "$compile" -e ".${extras}"
echo "setup done: $("$VENV/bin/python" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
