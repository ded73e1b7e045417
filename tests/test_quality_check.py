"""scripts/check_worldmodel_quality.py end to end at a seconds-long setting: expert episodes from
the real simulator, a few updates of the tiny model, the open-loop report, and --save/--load."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("metaworld")

SCRIPT = "scripts/check_worldmodel_quality.py"
SMALL_RUN = ["--episodes", "2", "--eval-episodes", "1", "--episode-length", "14", "--horizon", "3",
             "--batch", "2", "--threads", "1"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *SMALL_RUN, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def summary(out: str) -> tuple[float, float, float, float]:
    line = next(ln for ln in out.splitlines() if ln.startswith("SUMMARY"))
    psnr, copy, mse, mean = map(float, re.search(
        r"PSNR ([\d.]+) vs copy-last ([\d.]+) dB .* reward MSE ([\d.]+) vs mean ([\d.]+)", line).groups())
    return psnr, copy, mse, mean


@pytest.mark.timeout(600)
def test_quality_check_reports_and_a_saved_model_reloads_to_the_same_numbers(tmp_path):
    data, saved = tmp_path / "episodes.npz", tmp_path / "model"
    trained = run("--train-steps", "4", "--data", str(data), "--save", str(saved))
    assert trained.returncode in (0, 1), trained.stderr[-2000:]  # 1: loses a baseline, as 4 steps do
    assert "episodes collected from plate-slide-v3" in trained.stdout and data.exists()
    assert "PSNR per imagined step" in trained.stdout and "tokenizer recon: future" in trained.stdout
    # the defaults: the tokenizer alone for 65% of the steps, then the transformer on frozen codes
    assert "'updates_tokenizer': 3, 'updates_transformer': 1" in trained.stdout
    psnr, copy, mse, mean = summary(trained.stdout)
    assert 0 < psnr < copy  # four updates cannot beat holding the last frame
    assert (trained.returncode == 0) == (psnr > copy and mse < mean)

    reloaded = run("--load", str(saved), "--data", str(data))
    assert "episodes loaded from" in reloaded.stdout, reloaded.stderr[-2000:]
    assert summary(reloaded.stdout) == (psnr, copy, mse, mean)  # same model, data and seed
