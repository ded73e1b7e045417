"""The training entry point end to end (DrQ-v2 path) through its real command line."""
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPISODE_STEPS, ACTION_REPEAT = 10, 2
FRAMES_PER_EPISODE = EPISODE_STEPS * ACTION_REPEAT
# A tiny but complete DrQ-v2 run on Meta-World: short episodes, a small agent, few eval episodes.
TINY = [
    "world_model=none", "preset=cpu", f"task.episode_length={EPISODE_STEPS}", "num_seed_frames=40",
    "eval_every_frames=80", "num_eval_episodes=1", "save_every_frames=40", "agent.batch_size=16",
    "agent.hidden_dim=64", "agent.num_expl_steps=10", "replay.capacity=5000", "log.wandb=disabled",
    "log.progress_bar=false",
]


def train(run_dir: Path, *overrides: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    cmd = [sys.executable, str(REPO / "mbrl" / "train_mbpo.py"), *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_drqv2_run_writes_logs_videos_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = train(run, "num_train_frames=160", "log.wandb=offline", "demo=true")
    assert "preset=cpu (given)" in result.stderr  # notices before Hydra starts: stdout stays Hydra's
    assert "[train] done: final eval success " in result.stdout
    assert "seeded the replay buffer with 5 demonstrations (500 transitions)" in result.stdout
    train_rows, eval_rows = rows(run / "train.csv"), rows(run / "eval.csv")
    assert [int(r["frame"]) for r in train_rows] == list(range(20, 161, 20))
    assert [int(r["frame"]) for r in eval_rows] == [0, 80, 160]
    for column in ("frame", "step", "episode", "episode_reward", "success", "fps", "wall_time"):
        assert column in train_rows[0] and column in eval_rows[0]
    assert math.isfinite(float(train_rows[-1]["agent_critic_loss"]))  # logged, not NaN
    assert int(train_rows[0]["buffer_size"]) == 500 + EPISODE_STEPS  # 5 shipped demos + 1 episode
    assert len(list((run / "episodes").glob("*.npz"))) == 8
    assert sorted(p.name for p in (run / "videos").glob("*.mp4")) == [
        "eval_00000000.mp4", "eval_00000080.mp4", "eval_00000160.mp4"]
    assert (run / "checkpoints" / "last.pt").stat().st_size > 0
    assert list((run / "tb").iterdir()) and (run / "wandb").is_dir()
    assert (run / ".hydra" / "config.yaml").exists()


def test_cfg_job_prints_the_composed_config_as_yaml_alone(tmp_path):
    """``--cfg job > config.yaml`` gives a config file: the preset notice goes to stderr."""
    import yaml

    for script, args in (("mbrl/train_mbpo.py", ["task=dmc/walker_walk"]), ("scripts/pretrain.py", [])):
        result = subprocess.run([sys.executable, str(REPO / script), *args, "--cfg", "job"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        assert isinstance(yaml.safe_load(result.stdout)["world_model"], dict), result.stdout[:300]
        assert "preset=" in result.stderr


def test_resume_after_kill_loses_no_episode(tmp_path):
    frames = 240
    straight = tmp_path / "straight"
    train(straight, f"num_train_frames={frames}")
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    cmd = [sys.executable, str(REPO / "mbrl" / "train_mbpo.py"), *TINY, f"num_train_frames={frames}",
           f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        episodes = list((run / "episodes").glob("*.npz")) if (run / "episodes").exists() else []
        if (run / "checkpoints" / "last.pt").exists() and len(episodes) >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name for p in (run / "episodes").glob("*.npz")}
    assert 5 <= len(before) < frames // FRAMES_PER_EPISODE

    result = train(run, f"num_train_frames={frames}", "resume=true")
    assert "resumed" in result.stdout
    after = {p.name for p in (run / "episodes").glob("*.npz")}
    assert before <= after, "a finished episode was lost"
    assert len(after) == len(list((straight / "episodes").glob("*.npz"))) == frames // FRAMES_PER_EPISODE
    train_frames = [int(r["frame"]) for r in rows(run / "train.csv")]
    assert train_frames == [int(r["frame"]) for r in rows(straight / "train.csv")]
    assert [int(r["frame"]) for r in rows(run / "eval.csv")] == [int(r["frame"]) for r in rows(straight / "eval.csv")]

    # Resuming a finished run does nothing more.
    again = train(run, f"num_train_frames={frames}", "resume=true")
    assert "already finished" in again.stdout
    assert len(list((run / "episodes").glob("*.npz"))) == len(after)


def test_a_run_stopped_before_its_first_checkpoint_continues_from_its_episodes(tmp_path):
    run = tmp_path / "run"
    train(run, "num_train_frames=80")
    (run / "checkpoints" / "last.pt").unlink()  # as if killed before the first save,
    log = run / "train.csv"  # and after storing the last episode but before logging it
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))
    before = {p.name: p.read_bytes() for p in (run / "episodes").glob("*.npz")}
    result = train(run, "num_train_frames=120", "resume=true")
    assert "stopped before its first checkpoint" in result.stderr
    after = {p.name: p.read_bytes() for p in (run / "episodes").glob("*.npz")}
    assert len(after) == 120 // FRAMES_PER_EPISODE and all(after[name] == data for name, data in before.items())
    frames = [int(r["frame"]) for r in rows(run / "train.csv")]
    assert frames == list(range(FRAMES_PER_EPISODE, 121, FRAMES_PER_EPISODE))  # each episode logged once
    from worldmodel.episodes import load_episode  # training episodes serve as demos: settings recorded

    meta = load_episode(sorted((run / "episodes").glob("*.npz"))[0]).meta
    assert meta["env_settings"]["action_repeat"] == ACTION_REPEAT and "success_bonus" in meta["env_settings"]


def test_a_run_stopped_before_its_final_eval_is_finished_not_skipped(tmp_path):
    """Its episodes reached num_train_frames, its final eval and checkpoint never happened: resuming
    evaluates and saves it (with its checkpoint's agent) instead of calling it finished."""
    import shutil

    import torch

    run = tmp_path / "run"
    train(run, "num_train_frames=40")
    shutil.copytree(run / "checkpoints", tmp_path / "at_40")
    train(run, "num_train_frames=80", "resume=true")
    shutil.rmtree(run / "checkpoints")  # as if killed after its last episode, before the final eval and save
    shutil.copytree(tmp_path / "at_40", run / "checkpoints")
    log = run / "eval.csv"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))
    assert [int(r["frame"]) for r in rows(log)] == [0, 40]
    result = train(run, "num_train_frames=80", "resume=true")
    assert "stopped before its final eval and checkpoint" in result.stdout
    assert [int(r["frame"]) for r in rows(log)] == [0, 40, 80]
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert state["step"] * ACTION_REPEAT == 80
    assert "already finished" in train(run, "num_train_frames=80", "resume=true").stdout
    # without any checkpoint its agent is lost: refused, not evaluated fresh as if it were the run's
    shutil.rmtree(run / "checkpoints")
    lost = train(run, "num_train_frames=80", "resume=true", check=False)
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert "no checkpoint" in lost.stderr and "never saved" in lost.stderr


def test_a_run_killed_before_its_first_episode_starts_over_without_duplicate_rows(tmp_path):
    """Killed after its frame-0 eval row but before an episode or checkpoint was stored: resumed,
    it starts over, and its logs are those of an uninterrupted run (one frame-0 row, not two)."""
    import shutil

    run = tmp_path / "run"
    train(run, "num_train_frames=20")
    shutil.rmtree(run / "episodes")
    shutil.rmtree(run / "checkpoints")
    (run / "train.csv").unlink()
    lines = (run / "eval.csv").read_text().splitlines(keepends=True)
    (run / "eval.csv").write_text("".join(lines[:2]))  # the header and the frame-0 row
    train(run, "num_train_frames=20", "resume=true")
    assert [int(r["frame"]) for r in rows(run / "eval.csv")] == [0, 20]
    assert [int(r["frame"]) for r in rows(run / "train.csv")] == [20]


def test_resume_true_finds_the_latest_run_with_a_checkpoint_or_episodes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "mbrl"))
    from train_mbpo import resolve_resume

    import numpy as np

    from worldmodel.episodes import Episode, save_episode

    monkeypatch.chdir(tmp_path)
    runs = Path("runs") / "metaworld" / "plate_slide" / "none"
    args = ["task=metaworld/plate_slide", "world_model=none", "resume=true"]
    assert resolve_resume(args) == [*args[:2], "resume=true"]  # nothing to resume: a new run
    (runs / "20260101-000000_seed1" / "checkpoints").mkdir(parents=True)
    (runs / "20260101-000000_seed1" / "checkpoints" / "last.pt").write_bytes(b"")
    (runs / "20260102-000000_seed1" / "episodes").mkdir(parents=True)  # newer, no episode: nothing to resume
    assert resolve_resume(args)[-1] == f"hydra.run.dir={runs / '20260101-000000_seed1'}"
    episode = Episode(obs=np.zeros((3, 3, 8, 8), np.uint8), action=np.zeros((2, 4), np.float32),
                      reward=np.zeros(2, np.float32), success=np.zeros(2, bool))
    save_episode(runs / "20260103-000000_seed1" / "episodes" / "ep_000000.npz", episode)
    assert resolve_resume(args)[-1] == f"hydra.run.dir={runs / '20260103-000000_seed1'}"  # killed before saving
    assert resolve_resume([*args[:2], "seed=2", "resume=true"])[-1] == "resume=true"  # another seed's runs


@pytest.mark.parametrize("override, message", [
    ("task=metaworld/plate_slidee", "plate_slidee"),
    ("agent.update_every_steps=0", "agent.update_every_steps must be >= 1"),
    ("world_model=ivideogpt", "longer than an episode"),  # TINY's episodes: 11 frames < 12
    ("agent.stddev_clip=-1", "stddev_clip"),
    ("agent.not_a_key=1", "not_a_key"),
    ("task=metaworld/plate_slid", "did you mean metaworld/plate_slide"),  # Hydra would list no tasks
    ("+num_train_frame=20", "did you mean num_train_frames"),  # Hydra's own hint: this, then ignored
    ("device=cuda:7", "CUDA"),
])
def test_bad_input_gives_a_clear_message(tmp_path, override, message):
    result = train(tmp_path / "run", override, "num_train_frames=20", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_checkpoint_gives_a_clear_message(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = train(run, "num_train_frames=20", "resume=true", check=False)
    assert result.returncode == 1
    assert "corrupt" in result.stderr and "last.pt" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_simulator_names_the_extra(tmp_path):
    """With Meta-World made unimportable, the run stops with one line naming the extra."""
    fake = tmp_path / "shadow" / "metaworld"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named metaworld (hidden by the test)')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    result = train(tmp_path / "run", "num_train_frames=20", check=False, env=env)
    assert result.returncode == 1
    assert "metaworld" in result.stderr and "pip install" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_auto_preset_goes_before_hydras_own_flags():
    from mbrl.utils import insert_override

    assert insert_override(["task=dmc/walker_walk", "--cfg", "job"], "preset=cpu") == [
        "task=dmc/walker_walk", "preset=cpu", "--cfg", "job"]
    assert insert_override(["--help"], "preset=cpu") == ["preset=cpu", "--help"]
    assert insert_override(["-m", "seed=1,2"], "preset=cpu") == ["-m", "seed=1,2", "preset=cpu"]
