#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine (idempotent; fast when already done):
#   a virtual environment in .venv, torch pinned (CPU build; an unpinned torch pulls a CUDA
#   build of several GB), this package, and the simulators with headless rendering
#   (scripts/install_sims.sh).
#
#   bash scripts/setup.sh                  # Meta-World + DeepMind Control (the default)
#   bash scripts/setup.sh all              # + ManiSkill 3 and LIBERO
#   bash scripts/setup.sh --test           # + test tools and Debian's chromium (browser test)
#   TORCH_SPEC="torch==2.14.1" bash scripts/setup.sh   # another torch pin (e.g. a CUDA machine)
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
SIMS=()
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    *) SIMS+=("$arg") ;;
  esac
done
[ ${#SIMS[@]} -gt 0 ] || SIMS=(metaworld dmc)
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  pip install -q "$TORCH_SPEC"
fi
TORCH_VERSION=$(python -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\nmujoco==3.3.0\n' "$TORCH_VERSION" > "$CONSTRAINTS"
EXTRAS="player"
[ "$TEST" = 1 ] && EXTRAS="player,test"
echo "[setup] installing the package [$EXTRAS] (torch $TORCH_VERSION kept)"
pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
bash scripts/install_sims.sh "${SIMS[@]}"
if [ "$TEST" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium for the browser test"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] chromium is missing and this is not root: the browser test will be skipped"
  fi
fi
echo "[setup] done: activate with '. .venv/bin/activate'"
