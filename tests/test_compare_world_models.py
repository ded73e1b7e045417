"""scripts/compare_world_models.py: both world models train, imagine and are timed on the same data."""
import importlib.util
import math
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "compare_world_models.py")
KEYS = ("params_M", "train_steps", "steps_per_s", "psnr", "copy_psnr", "reward_mse",
        "mean_reward_mse", "transitions_per_s")


def load_script():
    spec = importlib.util.spec_from_file_location("compare_world_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(90)
def test_compare_both_models_on_same_data(capsys):
    script = load_script()
    results = script.main(["--image-size", "32", "--episodes", "2", "--eval-episodes", "1",
                           "--episode-length", "12", "--horizon", "3", "--train-minutes", "0.04",
                           "--rollout-batch", "4", "--models", "ivideogpt", "vid2world"])
    assert set(results) == {"ivideogpt", "vid2world"}
    for name, row in results.items():
        assert set(row) == set(KEYS), name
        for key in KEYS:
            assert math.isfinite(row[key]), (name, key, row[key])
        assert row["train_steps"] >= 1 and row["transitions_per_s"] > 0 and row["params_M"] > 0
    # same held-out windows for both: the baselines agree exactly
    assert results["ivideogpt"]["copy_psnr"] == results["vid2world"]["copy_psnr"]
    assert results["ivideogpt"]["mean_reward_mse"] == results["vid2world"]["mean_reward_mse"]
    # comparable parameter counts by default (within a factor 1.5)
    ratio = results["ivideogpt"]["params_M"] / results["vid2world"]["params_M"]
    assert ratio < 1.5 and ratio > 1 / 1.5, ratio
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("SUMMARY ") and "ivideogpt" in lines[-1] and "vid2world" in lines[-1]
    rows = [line for line in lines if line.split("|")[0].strip() in results]
    assert len(rows) == 2


def test_too_short_episodes_are_refused():
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--episode-length", "5", "--horizon", "10"])
