#!/usr/bin/env bash
# One-step set-up on a fresh Debian 12 machine (idempotent; fast when already done):
#   a virtual environment in .venv (Python 3.11), torch pinned (CPU build, from PyTorch's CPU index
#   unless pip's own sources have it; PyPI's Linux torch is a CUDA build of several GB), this package, and the simulators with headless rendering
#   (scripts/install_sims.sh). Every other dependency is pinned by constraints.txt.
#
#   bash scripts/setup.sh                  # Meta-World + DeepMind Control (the default)
#   bash scripts/setup.sh all              # + ManiSkill 3 and LIBERO
#   bash scripts/setup.sh --test           # + test tools and Debian's chromium (browser test)
#   TORCH_SPEC="torch==2.14.1" bash scripts/setup.sh   # another torch pin (e.g. a CUDA machine)
#   PYTHON=/path/to/python3.11 bash scripts/setup.sh   # the interpreter for a new .venv
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: bash scripts/setup.sh [--test] [metaworld|dmc|maniskill|libero|all]...
  (no simulator named: metaworld dmc)
  --test   also the test tools and Debian's chromium (for the browser test)
environment: PYTHON (a Python 3.11 for a new .venv; default python3.11, else python3),
             TORCH_SPEC (default torch==2.13.0, the CPU build)
EOF
}
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- arguments (before anything is created)
TEST=0
SIMS=()
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    -h | --help) usage; exit 0 ;;
    all | metaworld | dmc | maniskill | libero) SIMS+=("$arg") ;;
    *) echo "[setup] unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#SIMS[@]} -gt 0 ] || SIMS=(metaworld dmc)
TORCH_SPEC_GIVEN="${TORCH_SPEC:+1}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
[ -f constraints.txt ] || die "constraints.txt is missing from $(pwd)"

# ---------------------------------------------------------------- Python 3.11 and .venv
is_py311() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' >/dev/null 2>&1; }
VENV_PY=.venv/bin/python
# Complete: an interpreter, an activate script and the venv's own pip (else bare pip is a global one).
venv_complete() { [ -x "$VENV_PY" ] && [ -f .venv/bin/activate ] && "$VENV_PY" -m pip --version >/dev/null 2>&1; }

if venv_complete; then
  is_py311 "$VENV_PY" || die ".venv was built with $("$VENV_PY" --version 2>&1), but this project needs \
Python 3.11 (the CPU torch build is for 3.11 only): remove it (rm -rf .venv) and rerun, with PYTHON=/path/to/python3.11 if python3.11 is not on PATH"
else
  if [ -z "${PYTHON:-}" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "no Python at '$PYTHON': install Python 3.11 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11"
  is_py311 "$PYTHON" || die "$PYTHON is $("$PYTHON" --version 2>&1), but this project needs Python 3.11 \
(the CPU torch build is for 3.11 only; another Python pulls a CUDA torch of several GB): install Python 3.11 \
(Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11"
  if [ -e .venv ]; then
    echo "[setup] .venv is incomplete (no interpreter, activate script or pip): rebuilding it"
    rm -rf .venv
  fi
  echo "[setup] creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv || { rm -rf .venv; die "'$PYTHON -m venv .venv' failed (Debian/Ubuntu: apt-get install python3.11-venv)"; }
  venv_complete || { rm -rf .venv; die "the new .venv has no working pip (Debian/Ubuntu: apt-get install python3.11-venv)"; }
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() { "$VENV_PY" -m pip install -q "$@"; }

# ---------------------------------------------------------------- torch (first, pinned), then the package
torch_version() { "$VENV_PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null; }
TORCH_VERSION="$(torch_version || true)"
# The build pip would pick for TORCH_SPEC from its configured sources (a local wheel, a mirror, PyPI).
torch_candidate() {
  "$VENV_PY" -m pip install --dry-run --no-deps -q --report - "$TORCH_SPEC" 2>/dev/null \
    | "$VENV_PY" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])'
}
if [ -z "$TORCH_VERSION" ]; then
  TORCH_INDEX=()
  # PyPI's Linux torch is the CUDA build (several GB): for the default pin, unless pip's own sources
  # already offer a +cpu build (e.g. a local wheel), add PyTorch's CPU index, whose +cpu build pip then prefers.
  if [ -z "$TORCH_SPEC_GIVEN" ] && [[ "$(uname -s)" == Linux && "$(torch_candidate || true)" != *+cpu ]]; then
    echo "[setup] pip's sources offer no CPU build of $TORCH_SPEC: adding $TORCH_CPU_INDEX"
    TORCH_INDEX=(--extra-index-url "$TORCH_CPU_INDEX")
  fi
  echo "[setup] installing $TORCH_SPEC"
  pip_install -c constraints.txt ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "$TORCH_SPEC"
elif [ -n "$TORCH_SPEC_GIVEN" ] && ! "$VENV_PY" - "$TORCH_SPEC" "$TORCH_VERSION" <<'EOF'
import sys
from pip._vendor.packaging.requirements import Requirement
req = Requirement(sys.argv[1])
sys.exit(0 if req.name == "torch" and req.specifier.contains(sys.argv[2], prereleases=True) else 1)
EOF
then
  echo "[setup] WARNING: .venv has torch $TORCH_VERSION, but TORCH_SPEC asks for '$TORCH_SPEC': installing that" >&2
  pip_install -c constraints.txt "$TORCH_SPEC"
fi
TORCH_VERSION="$(torch_version)" || die "torch does not import in .venv after installing '$TORCH_SPEC'"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\nmujoco==3.3.0\n' "$TORCH_VERSION" > "$CONSTRAINTS"
EXTRAS="player"
[ "$TEST" = 1 ] && EXTRAS="player,test"
echo "[setup] installing the package [$EXTRAS] (torch $TORCH_VERSION kept; versions from constraints.txt)"
pip_install -c "$CONSTRAINTS" -c constraints.txt -e ".[$EXTRAS]"
VIRTUAL_ENV="$(pwd)/.venv" bash scripts/install_sims.sh "${SIMS[@]}"
if [ "$TEST" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium for the browser test"
    apt-get update -qq || die "apt-get update failed, so chromium (for the browser test) is not installed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || die "apt-get install chromium failed (needed by the browser test, tests/test_player_browser.py)"
    command -v chromium >/dev/null 2>&1 || die "chromium is still not on PATH after apt-get install chromium"
  else
    echo "[setup] chromium is missing and this is not root: the browser test will be skipped"
  fi
fi
echo "[setup] done: activate with '. .venv/bin/activate'"
