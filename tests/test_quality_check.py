"""scripts/check_worldmodel_quality.py: its scoring pieces on tiny synthetic arrays (baselines, split,
action index, data settings, argument checks), and end to end at a seconds-long setting: expert
episodes from the real simulator, a few updates of the tiny model, the open-loop report, and
--save/--load."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

SCRIPT = "scripts/check_worldmodel_quality.py"
SMALL_RUN = ["--episodes", "2", "--eval-episodes", "1", "--episode-length", "14", "--horizon", "3",
             "--batch", "2", "--threads", "1"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def q():
    spec = importlib.util.spec_from_file_location("check_worldmodel_quality", os.path.join(ROOT, SCRIPT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *SMALL_RUN, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)


def summary(out: str) -> tuple[float, float, float, float]:
    line = next(ln for ln in out.splitlines() if ln.startswith("SUMMARY"))
    psnr, copy, mse, mean = map(float, re.search(
        r"PSNR ([\d.]+) vs copy-last ([\d.]+) dB .* reward MSE ([\d.]+) vs mean ([\d.]+)", line).groups())
    return psnr, copy, mse, mean


def episode(steps: int, first_value: int, reward_offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame t is all ``first_value + 10 t``; action t is [t, -t]; reward t is ``reward_offset + t``."""
    t = np.arange(steps + 1)
    frames = np.broadcast_to((first_value + 10 * t).astype(np.uint8)[:, None, None, None], (steps + 1, 3, 4, 4))
    actions = np.stack([t[:-1], -t[:-1]], 1).astype(np.float32)
    return np.ascontiguousarray(frames), actions, (reward_offset + t[:-1]).astype(np.float32)


def test_baselines_are_copy_last_and_the_training_mean_on_held_out_windows(q):
    split = q.Split(train=[episode(4, 0, 1.0)], held_out=[episode(7, 100, 10.0)])  # train rewards 1..4
    ev = q.evaluation_set(split, context=2, horizon=3)
    # held-out windows start every 3 steps: frames 0-4 and 3-7 (the second's context is the first's end)
    held = torch.from_numpy(split.held_out[0][0])
    assert torch.equal(ev.windows.obs, torch.stack([held[0:5], held[3:8]]))
    assert ev.real_rewards.tolist() == [[11, 12, 13], [14, 15, 16]]  # r_{T0-1+i}: r_1 .. for context 2
    # copy-last holds frame T0 - 1: 10, 20 and 30 grey levels from the real frames 1, 2 and 3 steps on
    copy_psnr, mean_mse = q.baseline_scores(ev)
    expected = [20 * math.log10(255 / d) for d in (10, 20, 30)]
    assert copy_psnr.tolist() == pytest.approx(expected, abs=1e-4)
    assert ev.train_mean == 2.5  # the training episodes' mean, not the held-out one
    assert mean_mse == pytest.approx(np.mean((np.arange(11, 17) - 2.5) ** 2))
    # a perfect prediction scores the metrics' PSNR of identical frames
    perfect, mse = q.score(ev.real_frames, ev.real_rewards, ev)
    assert mse == 0 and bool((perfect > 90).all())


class EchoModel:
    """Not a world model: imagines a frame filled with the first action entry it is given, and that
    entry as the reward, so that the action index of ``open_loop`` shows in its output."""
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.sampling = {"temperature": 1.0, "top_k": 100}
        self.temperatures: list[float] = []

    def eval(self) -> "EchoModel":
        return self

    def reset(self, context_obs: torch.Tensor, generator: torch.Generator) -> tuple[int, ...]:
        return tuple(context_obs.shape)

    def step(self, state: tuple[int, ...], action: torch.Tensor):
        self.temperatures.append(self.sampling["temperature"])
        frame = action[:, 0, None, None, None].expand(state[0], *state[2:]).to(torch.uint8)
        return frame, action[:, 0], state


def test_open_loop_step_i_takes_the_action_of_the_latest_frame_and_the_given_temperature(q):
    windows = q.eval_windows([episode(9, 0, 0.0)], context=3, horizon=4)  # actions [t, -t]
    model = EchoModel()
    frames, rewards = q.open_loop(model, windows, context=3, horizon=4, seed=0, temperature=0.0)
    expected = windows.action[:, 2:6, 0]  # a_{T0-1+i}: the action taken in o_{T0-1+i} makes o_{T0+i}
    assert torch.equal(rewards, expected) and torch.equal(frames[:, :, 0, 0, 0], expected.to(torch.uint8))
    assert model.temperatures == [0.0] * 4 and model.sampling["temperature"] == 1.0  # greedy, then restored
    assert q.decoding(model, 0.0) == "greedy"


def test_held_out_seeds_are_disjoint_from_the_training_seeds(q):
    train, held_out = q.episode_seeds(0, 200, 4)
    assert list(held_out) == [10_000, 10_001, 10_002, 10_003]  # as the documented figures were collected
    for episodes in (2, 200, 20_000):
        train, held_out = q.episode_seeds(5, episodes, 4)
        assert len(train) == episodes and len(held_out) == 4 and not set(train) & set(held_out)


def test_train_steps_zero_means_no_updates(q):
    assert q.training_progress(0, 1.0, 0, 30.0) == 1.0  # not the wall-clock budget
    assert q.training_progress(2, 1e6, 4, 30.0) == 0.5  # updates, not time
    assert q.training_progress(0, 90.0, None, 3.0) == 0.5


@pytest.mark.parametrize("argv, flag", [
    (["--episode-length", "10", "--horizon", "10"], "--episode-length 10 steps"),
    (["--episodes", "0"], "--episodes"), (["--eval-episodes", "0"], "--eval-episodes"),
    (["--train-steps", "-1"], "--train-steps")])
def test_bad_sizes_exit_with_a_message_and_status_1(q, argv, flag):
    with pytest.raises(SystemExit) as e:
        q.parse_args(argv)
    assert isinstance(e.value.code, str) and flag in e.value.code  # sys.exit(message): status 1, not 2
    assert q.parse_args(["--episode-length", "11", "--horizon", "10"]).horizon == 10  # 11 steps: 12 frames


def test_data_files_keep_their_settings_and_refuse_other_arguments(q, tmp_path, capsys):
    args = q.parse_args(SMALL_RUN)
    split = q.Split([episode(14, 0, 0.0)] * 2, [episode(14, 50, 0.0)])
    path = str(tmp_path / "episodes.npz")
    q.save_episodes(path, split, q.data_settings(args))
    loaded, stored = q.load_data(path, q.data_settings(q.parse_args(SMALL_RUN + ["--seed", "3"])), 2, 3)
    assert stored == q.data_settings(args) and len(loaded.train) == 2  # another training seed is fine
    for other in (["--episode-length", "13"], ["--task", "reach-v3"], ["--image-size", "32"]):
        with pytest.raises(SystemExit, match=other[0]):
            q.load_data(path, q.data_settings(q.parse_args(SMALL_RUN + other)), 2, 3)

    old = str(tmp_path / "old.npz")  # written before the settings were stored: used, with a warning
    np.savez(old, **{f"{s}_0_{k}": v for s in ("train", "eval")
                     for k, v in zip(("frames", "actions", "rewards"), episode(4, 0, 0.0))})
    loaded, stored = q.load_data(old, q.data_settings(args), 2, 3)
    assert stored is None and len(loaded.held_out) == 1 and "unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--episode-length 4 steps"):  # too short for context 2 + horizon 4
        q.load_data(old, q.data_settings(args), 2, 4)


def test_load_refuses_another_model_type_before_collecting(q, tmp_path, capsys):
    from worldmodel.registry import world_model_class
    world_model_class("vid2world").from_config({"image_size": 32, "action_dim": 4, "context_frames": 2,
                                                "size": "tiny"}).save_pretrained(str(tmp_path / "v2w"))
    with pytest.raises(SystemExit, match="vid2world"):
        q.main(SMALL_RUN + ["--load", str(tmp_path / "v2w")])
    assert "episodes" not in capsys.readouterr().out


@pytest.mark.timeout(600)
def test_quality_check_reports_and_a_saved_model_reloads_to_the_same_numbers(q, tmp_path):
    data, out = tmp_path / "episodes.npz", tmp_path / "pretrain_out"
    trained = run("--train-steps", "4", "--data", str(data), "--save", str(out / "model"))
    assert trained.returncode in (0, 2), trained.stderr[-2000:]  # 2: loses a baseline, as 4 steps do
    assert "episodes collected from plate-slide-v3" in trained.stdout and data.exists()
    assert "PSNR per imagined step" in trained.stdout and "tokenizer recon: future" in trained.stdout
    # the defaults: the tokenizer alone for 65% of the steps, then the transformer on frozen codes
    assert "'updates_tokenizer': 3, 'updates_transformer': 1" in trained.stdout
    psnr, copy, mse, mean = summary(trained.stdout)
    assert 0 < psnr < copy  # four updates cannot beat holding the last frame
    assert (trained.returncode == 0) == (psnr > copy and mse < mean)
    # the baselines printed are those of the stored held-out episodes and training rewards
    split, settings = q.load_episodes(str(data))
    assert settings == q.data_settings(q.parse_args(SMALL_RUN))
    copy_psnr, mean_mse = q.baseline_scores(q.evaluation_set(split, 2, 3))
    assert (copy, mean) == (float(f"{copy_psnr.mean().item():.2f}"), float(f"{mean_mse:.4f}"))

    reloaded = run("--load", str(out), "--data", str(data))  # a scripts/pretrain.py output folder
    assert "episodes loaded from" in reloaded.stdout, reloaded.stderr[-2000:]
    assert summary(reloaded.stdout) == (psnr, copy, mse, mean)  # same model, data and seed


@pytest.mark.timeout(600)
def test_an_official_action_free_download_is_evaluated_with_a_zero_action_head(tmp_path):
    """``--load`` of an official thuml/iVideoGPT folder imports it for the data's actions (an
    action-free one: a zero action head, reported), rather than refusing its action dim of 0."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_import_ivideogpt import (TINY_LLAMA, TINY_TOKENIZER, official_tokenizer_shapes,
                                       official_transformer_shapes, random_state, write_official)

    folder = write_official(tmp_path / "official", random_state(official_tokenizer_shapes(TINY_TOKENIZER), 1),
                            random_state(official_transformer_shapes(TINY_LLAMA), 2))
    result = run("--load", folder, "--data", str(tmp_path / "episodes.npz"))
    assert result.returncode in (0, 2), result.stderr[-2000:]  # 2: random weights lose to the baselines
    assert "SUMMARY" in result.stdout and all(math.isfinite(v) for v in summary(result.stdout))
