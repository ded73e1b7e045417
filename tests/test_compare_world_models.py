"""scripts/compare_world_models.py: both world models train, imagine and are timed on the same data."""
import importlib.util
import math
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "compare_world_models.py")
KEYS = ("params_M", "train_steps", "steps_per_s", "psnr", "copy_psnr", "reward_mse",
        "mean_reward_mse", "transitions_per_s")
RUN = ["--image-size", "32", "--episodes", "2", "--eval-episodes", "1", "--episode-length", "12", "--horizon", "3",
       "--train-steps", "2", "--rollout-batch", "4", "--models", "ivideogpt", "vid2world"]


def load_script():
    spec = importlib.util.spec_from_file_location("compare_world_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(90)
def test_compare_both_models_on_same_data(capsys):
    script = load_script()
    results = script.main(RUN)
    assert set(results) == {"ivideogpt", "vid2world"}
    for name, row in results.items():
        assert set(row) == set(KEYS), name
        for key in KEYS:
            assert math.isfinite(row[key]), (name, key, row[key])
        assert row["train_steps"] == 2 and row["transitions_per_s"] > 0 and row["params_M"] > 0  # --train-steps
    # same held-out windows for both: the baselines agree exactly, and are those of the held-out
    # episodes (copy-last) and of the training rewards (mean), as check_worldmodel_quality scores them
    args = script.parse_args(RUN)
    split = script.collect_split(args.task, args.episodes, args.eval_episodes, args.episode_length, args.seed,
                                 args.image_size)
    copy_psnr, mean_mse = script.baseline_scores(script.evaluation_set(split, args.context, args.horizon))
    for row in results.values():
        assert (row["copy_psnr"], row["mean_reward_mse"]) == (copy_psnr.mean().item(), mean_mse)
    # comparable parameter counts by default (within a factor 1.5)
    ratio = results["ivideogpt"]["params_M"] / results["vid2world"]["params_M"]
    assert ratio < 1.5 and ratio > 1 / 1.5, ratio
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("SUMMARY ") and "ivideogpt" in lines[-1] and "vid2world" in lines[-1]
    assert any("2 updates each" in line and "iVideoGPT greedy" in line for line in lines)  # the decoding judged
    rows = [line for line in lines if line.split("|")[0].strip() in results]
    assert len(rows) == 2


@pytest.mark.parametrize("argv", [["--episode-length", "10", "--horizon", "10"], ["--episodes", "0"],
                                  ["--eval-episodes", "0"]])
def test_too_short_episodes_and_empty_splits_are_refused(argv, capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(argv)
    assert argv[0] in capsys.readouterr().err


def test_an_episode_of_context_plus_horizon_minus_one_steps_suffices():
    script = load_script()  # 11 steps: 12 frames, one window of 2 + 10
    assert script.parse_args(["--episode-length", "11", "--horizon", "10"]).episode_length == 11
