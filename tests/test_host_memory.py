"""worldmodel.host_memory: freed activations are reused instead of faulted in again."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worldmodel.host_memory import _glibc, malloc_setting

ROOT = Path(__file__).resolve().parents[1]

# Runs two residual blocks of a decoder's full-resolution level (GroupNorm, SiLU, conv: 4 MiB
# activations, each freed a step later) 20 times, after an optional keep_freed_host_memory(), and
# prints the page faults the loop took. By default glibc maps each activation afresh.
PROBE = """
import resource, sys, torch
import torch.nn.functional as F
from worldmodel.host_memory import keep_freed_host_memory
print(keep_freed_host_memory() if sys.argv[1] == "keep" else None)
w = torch.randn(32, 32, 3, 3) * 0.05
x = torch.randn(8, 32, 64, 64)
def block(h):
    return h + F.conv2d(F.silu(F.group_norm(h, 8)), w, padding=1)
with torch.no_grad():
    for _ in range(3):
        block(block(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block(block(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(_glibc() is None, reason="the malloc thresholds are glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    _, default_faults = _probe("default")
    kept, kept_faults = _probe("keep")
    assert kept == "True"
    assert default_faults > 100_000  # measured ~200,000: ~1,000 pages per 4 MiB activation
    assert kept_faults < 10_000  # measured 0-2,100


@pytest.mark.skipif(_glibc() is None, reason="the malloc thresholds are glibc's")
def test_the_users_malloc_settings_stand():
    kept, faults = _probe("keep", MALLOC_MMAP_THRESHOLD_=str(2**20))
    assert kept == "False"
    assert faults > 100_000  # their 1 MiB threshold: every activation mapped afresh


@pytest.mark.skipif(_glibc() is None, reason="the malloc thresholds are glibc's")
def test_benchmarks_name_the_malloc_setting_that_decided(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert malloc_setting(keep_freed=False) == "default"
    assert malloc_setting(keep_freed=True) == "keep-freed"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(2**20))
    assert malloc_setting(keep_freed=True) == "as MALLOC_TRIM_THRESHOLD_ set it"
