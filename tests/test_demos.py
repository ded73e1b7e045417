"""Demonstrations: Meta-World scripted experts in our env, the shipped demos, load_demos, the
collection script, and the LIBERO / ManiSkill converters on files with the real schemas."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mbrl.demos import DemoSettingsError, collect_command, demo_dir, env_settings, load_demos, task_slug
from mbrl.demos.collect import collect
from worldmodel.episodes import Episode, EpisodeFormatError, episode_paths, load_episode, save_episode

REPO = Path(__file__).resolve().parents[1]
REFERENCE_TASKS = ("plate_slide", "hammer", "coffee_push", "door_lock", "handle_pull_side",
                   "button_press_topdown_wall")
SHIPPED_PER_TASK = 5
METAWORLD_ACTION_DIM = 4


def task_cfg(task: str):
    return task_cfgs([task])[0]


def task_cfgs(tasks: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base="1.3"):
        return [compose("collect_demos", overrides=[f"task={t}"]).task for t in tasks]


# ----- Meta-World experts -----
def test_every_metaworld_task_has_an_expert():
    from mbrl.demos.metaworld_expert import MetaWorldExpert, expert_policy_classes

    classes = expert_policy_classes()
    assert len(classes) == 50
    yamls = sorted((REPO / "cfgs/task/metaworld").glob("*.yaml"))
    assert len(yamls) == 50
    for yaml, cfg in zip(yamls, task_cfgs([f"metaworld/{y.stem}" for y in yamls])):
        name = cfg.name
        assert name in classes, f"{yaml.name}: no scripted policy for {name}"
        assert task_slug(name) == yaml.stem  # demo folders are named after the task files
    with pytest.raises(ValueError, match="39-dim state"):
        MetaWorldExpert("plate_slide")(np.zeros(4))


@pytest.mark.parametrize("task", REFERENCE_TASKS)
def test_shipped_demos_load_and_succeed(task):
    cfg = task_cfg(f"metaworld/{task}")
    episodes = load_demos(cfg, image_size=cfg.image_size, action_dim=METAWORLD_ACTION_DIM)
    assert len(episodes) == SHIPPED_PER_TASK
    for ep in episodes:
        assert len(ep) == cfg.episode_length and ep.image_size == cfg.image_size
        assert ep.success.any(), f"{task}: a shipped demo never succeeds"
        # the env's +10 success bonus is in the stored rewards exactly on success steps
        assert (ep.reward[ep.success] >= cfg.success_bonus).all()
        assert ep.meta["noise"] == 0.0 and ep.meta["task"] == f"metaworld/{cfg.name}"
        assert ep.obs.std() > 10, "frames look blank"


def test_live_expert_reproduces_a_shipped_demo(tmp_path):
    """Collect seed 0 of plate_slide again in-process: a success, and the same trajectory."""
    cfg = task_cfg("metaworld/plate_slide")
    result = collect(cfg, 1, tmp_path, seed=0, workers=1, progress=False)
    live = load_episode(result.paths[0], image_size=64, action_dim=METAWORLD_ACTION_DIM)
    shipped = load_episode(sorted(demo_dir(cfg).glob("ep_0000_seed0.npz"))[0])
    assert live.success.any() and result.attempts == 1
    assert live.meta["env_settings"] == {"action_repeat": 2, "episode_length": 100, "success_bonus": 10.0,
                                         "camera": "corner", "flip_rows": True, "fast_render": True}
    here = {**OmegaConf.to_container(cfg), "demo_dir": str(tmp_path)}
    assert len(load_demos(here, 64, METAWORLD_ACTION_DIM)) == 1
    np.testing.assert_allclose(live.action, shipped.action, atol=1e-5)
    np.testing.assert_array_equal(live.success, shipped.success)
    np.testing.assert_array_equal(live.obs, shipped.obs)  # bit-identical: a one-frame shift differs by ~0.5


def test_collect_dmc_records_the_envs_episode_length_and_fps(tmp_path):
    """DMC's episode_length: null is resolved as the env resolves it (1000 simulator steps / action_repeat);
    fps is the agent-step rate (1 / (control timestep x action_repeat)) for every backend."""
    cfg = OmegaConf.merge(task_cfg("dmc/cartpole_balance"), {"action_repeat": 8})
    result = collect(cfg, 1, tmp_path, policy="random", success_only=False, workers=1, progress=False)
    ep = load_episode(result.paths[0])
    assert len(ep) == ep.meta["episode_length"] == 125 and ep.meta["fps"] == 12.5  # 100 Hz control / 8


def test_collect_reports_a_bad_task_setting_in_one_line(tmp_path, capsys):
    from mbrl.demos.collect import CollectEnvError
    from mbrl.utils import user_errors

    script = load_collect_script()
    cfg = OmegaConf.merge(task_cfg("dmc/cartpole_balance"), {"camera": "nope"})
    with pytest.raises(SystemExit), user_errors("collect_demos", script.USER_ERRORS):
        collect(cfg, 1, tmp_path, policy="random", success_only=False, workers=1, progress=False)
    assert capsys.readouterr().err.strip().startswith("[collect_demos] error: collecting seed 0 of "
                                                      "dmc/cartpole_balance failed: ValueError: task.camera='nope'")
    assert issubclass(CollectEnvError, ValueError)


def test_max_attempts_guard(tmp_path):
    cfg = task_cfg("metaworld/plate_slide")
    with pytest.raises(RuntimeError, match=r"only 0 of 1 episodes succeeded in 1 attempts"):
        collect(cfg, 1, tmp_path, policy="random", max_attempts=1, workers=1, progress=False)


def test_collect_script_parallel_with_noise(tmp_path):
    out = tmp_path / "demos"
    cmd = [sys.executable, str(REPO / "scripts/collect_demos.py"), "task=metaworld/door_lock",
           "episodes=2", "noise=0.1", "workers=2", "seed=10", f"out={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote 2 episodes" in run.stdout
    files = sorted(out.glob("*.npz"))
    assert [f.name.split("_seed")[0] for f in files] == ["ep_0000", "ep_0001"]
    for f in files:
        ep = load_episode(f, image_size=64, action_dim=METAWORLD_ACTION_DIM)
        assert ep.success.any() and ep.meta["noise"] == 0.1 and ep.meta["seed"] >= 10
        assert ep.meta["source"] == "metaworld_scripted_expert" and ep.meta["fps"] > 0
    # a second run refuses to mix into a folder that holds episodes
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert again.returncode != 0 and "already holds episodes" in again.stderr


# ----- demo=true -----
def test_load_demos_errors_name_the_fix(tmp_path):
    cfg = task_cfg("metaworld/hammer")
    with pytest.raises(FileNotFoundError, match=r"is missing.*collect_demos.py task=metaworld/hammer episodes=5"):
        load_demos(cfg, 64, METAWORLD_ACTION_DIM, root=tmp_path)
    (tmp_path / "metaworld/hammer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no .npz episodes"):
        load_demos(cfg, 64, METAWORLD_ACTION_DIM, root=tmp_path)
    with pytest.raises(EpisodeFormatError, match="but the run uses 32x32"):
        load_demos(cfg, 32, METAWORLD_ACTION_DIM)


def test_demo_instructions_fit_the_suite(tmp_path):
    """Only suites with a scripted expert or motion planner are sent to collect_demos.py; for
    ManiSkill's motion planner the command says it needs numpy<2 (the player shows it too)."""
    dmc, libero, maniskill = task_cfgs(["dmc/walker_walk", "libero/libero_spatial", "maniskill/pick_cube"])
    assert collect_command(maniskill).startswith("python scripts/collect_demos.py task=maniskill/pick_cube "
                                                 "episodes=5 in a venv with numpy<2 (")
    with pytest.raises(FileNotFoundError) as err:
        load_demos(dmc, 64, 6, root=tmp_path)
    message = str(err.value)
    assert "no scripted expert for DMC" in message and "collect_demos.py task=dmc" not in message
    assert str(tmp_path / "dmc" / "walker_walk") in message  # where to put the episodes
    assert "train_mbpo.py task=dmc/walker_walk world_model=none task.camera=1`" in \
        collect_command(dmc, overrides=["task.camera=1"])
    with pytest.raises(FileNotFoundError, match=r"To make them: python scripts/convert_demos\.py format=libero "
                                                r"input=<LIBERO demo \.hdf5> task=libero/libero_spatial "
                                                r"task\.task_index=0\.$"):
        load_demos(libero, 64, 7, root=tmp_path)


def test_every_task_config_has_a_demo_dir(tmp_path):
    """task.demo_dir is a key of every suite config: null keeps the default folder, a folder given on
    the command line replaces it (for demo=true, the collectors and the player, which share demo_dir)."""
    tasks = sorted(f"{p.parent.name}/{p.stem}" for p in (REPO / "cfgs/task").glob("*/*.yaml"))
    first_of_suite = {task.split("/")[0]: task for task in reversed(tasks)}.values()
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base="1.3"):
        for task in tasks:
            cfg = compose("collect_demos", overrides=[f"task={task}", f"task.demo_dir={tmp_path}"])
            assert demo_dir(cfg.task) == tmp_path, task
        for task in first_of_suite:  # the training and player configs, which compose the task the same way
            for config in ("config", "play"):
                assert compose(config, overrides=[f"task={task}"]).task.demo_dir is None, (config, task)
                cfg = compose(config, overrides=[f"task={task}", f"task.demo_dir={tmp_path}"])
                assert demo_dir(cfg.task) == tmp_path, (config, task)
    for suite in sorted((REPO / "cfgs/suite").glob("*.yaml")):
        assert re.search(r"^demo_dir: null +# \S", suite.read_text(), re.M), f"{suite.name}: demo_dir undocumented"


def test_libero_episode_length_comment_names_each_task_files_value():
    text = (REPO / "cfgs/suite/libero.yaml").read_text()
    comment = text[text.index("episode_length:"):text.index("success_bonus:")]
    yamls = sorted((REPO / "cfgs/task/libero").glob("*.yaml"))
    assert len(yamls) == 5
    for cfg in task_cfgs([f"libero/{y.stem}" for y in yamls]):
        assert f"{cfg.name} {cfg.episode_length}" in comment, cfg.name


def run_script(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]


def _maniskill_expert_refusal() -> str:
    """What collect_demos.py says for task=maniskill/pick_cube here, '' when it could collect."""
    import importlib.metadata
    import importlib.util

    from mbrl.demos.maniskill import numpy_conflict

    if importlib.util.find_spec("mani_skill") is None:
        return "pip install -e '.[maniskill]'"
    if importlib.util.find_spec("mplib") is None:
        return "pip install mplib"
    if numpy_conflict(np.__version__, importlib.metadata.version("mplib")):
        return f"crashes with numpy>=2 and this venv has numpy {np.__version__}: collect in a separate Python 3.11 venv"
    return ""


@pytest.mark.parametrize("args, message", [
    (["task=dmc/walker_walk"], "there is no scripted expert for DMC"),
    (["task=libero/libero_spatial"], "python scripts/convert_demos.py format=libero"),
    (["task=maniskill/pick_cube"], None),
    (["task=maniskill/pick_cube", "noise=0.1"], "noise=0.1: ManiSkill's motion planner plans whole trajectories"),
    (["episodes=0"], "episodes must be >= 1, got 0"),
])
def test_collect_script_user_errors_are_one_line(tmp_path, args, message):
    """ManiSkill's motion planner under numpy 2 is refused in one line, where mplib would segfault."""
    if message is None:
        message = _maniskill_expert_refusal()
        if not message:
            pytest.skip("ManiSkill, mplib and numpy<2 are installed: task=maniskill/pick_cube collects "
                        "(test_maniskill_motion_planning_collection)")
    assert_one_line_error(run_script("collect_demos.py", *args, f"out={tmp_path / 'out'}"), message)
    assert not (tmp_path / "out").exists()


def load_collect_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("collect_demos_script", REPO / "scripts" / "collect_demos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_script_passes_or_refuses_every_key(tmp_path, monkeypatch):
    """ManiSkill's motion planner takes episodes, seed and max_attempts; noise, workers > 1 and
    success_only=false are refused, not ignored. The other collectors get every key, workers
    defaulting to 2."""
    import mbrl.demos.maniskill as maniskill

    script = load_collect_script()
    calls = []
    monkeypatch.setattr(maniskill, "collect_motionplanning", lambda *a, **kw: calls.append(("mp", a, kw)))
    monkeypatch.setattr(script, "collect", lambda *a, **kw: calls.append(("collect", a, kw)))

    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base="1.3"):
            return compose("collect_demos", overrides=list(overrides))

    for ok in ([], ["workers=1", "episodes=3", "seed=4", "max_attempts=9"]):
        script.run_collection(cfg("task=maniskill/pick_cube", *ok), tmp_path)
    assert [c[0] for c in calls] == ["mp", "mp"] and calls[1][1][1:] == (3, tmp_path)
    assert calls[1][2] == {"seed": 4, "max_attempts": 9}
    for bad, match in [("noise=0.2", "noise=0.2: ManiSkill's motion planner"),
                       ("success_only=false", "success_only=false: ManiSkill's motion planner keeps only"),
                       ("workers=2", "workers=2: ManiSkill's motion planner runs in this process")]:
        with pytest.raises(script.CollectSettingsError, match=match):
            script.run_collection(cfg("task=maniskill/pick_cube", bad), tmp_path)
    assert len(calls) == 2
    script.run_collection(cfg("task=maniskill/pick_cube", "policy=random", "noise=0.2", "workers=3",
                              "success_only=false"), tmp_path)
    script.run_collection(cfg("task=metaworld/hammer"), tmp_path)
    assert calls[2][2]["noise"] == 0.2 and calls[2][2]["workers"] == 3 and calls[2][2]["success_only"] is False
    assert calls[3][0] == "collect" and calls[3][2]["workers"] == script.DEFAULT_WORKERS == 2


def write_demo(folder: Path, meta: dict, name: str = "ep_0000_seed0.npz", steps: int = 4) -> Path:
    episode = Episode(obs=np.zeros((steps + 1, 3, 8, 8), np.uint8), action=np.zeros((steps, 4), np.float32),
                      reward=np.zeros(steps, np.float32), success=np.zeros(steps, bool), meta=meta)
    return save_episode(folder / name, episode)


def test_load_demos_refuses_other_env_settings(tmp_path):
    cfg = task_cfg("metaworld/plate_slide")
    folder = demo_dir(cfg, tmp_path)
    write_demo(folder, {"env_settings": env_settings(cfg)})
    assert len(load_demos(cfg, 8, METAWORLD_ACTION_DIM, root=tmp_path)) == 1
    for key, run_value, shown in [("action_repeat", 1, "1"), ("success_bonus", 0.0, "0.0"),
                                  ("camera", "topview", "topview"), ("flip_rows", False, "false"),
                                  ("fast_render", False, "false")]:
        run = OmegaConf.merge(cfg, {key: run_value})
        recorded = str(cfg[key]).lower()
        with pytest.raises(DemoSettingsError) as err:
            load_demos(run, 8, METAWORLD_ACTION_DIM, root=tmp_path, skip_bad=True)
        message = str(err.value)
        assert f"made with task.{key}={recorded} but this run has task.{key}={shown}" in message
        assert "ep_0000_seed0.npz" in message and "collect_demos.py task=metaworld/plate_slide" in message
        assert f"Run with task.{key}={recorded}, or move" in message and message.endswith(f"task.{key}={shown}.")
    # the same values written differently are the same setting
    same = OmegaConf.merge(cfg, {"success_bonus": 10, "flip_rows": "true"})
    assert len(load_demos(same, 8, METAWORLD_ACTION_DIM, root=tmp_path)) == 1


def test_load_demos_checks_fast_render(tmp_path):
    """fast_render changes MuJoCo frames. Files that record env_settings but not fast_render were made
    at its default (true); LIBERO-converted frames come from the file, ManiSkill's renderer has no fast mode."""
    cfg = task_cfg("metaworld/plate_slide")
    write_demo(demo_dir(cfg, tmp_path), {"env_settings": {**env_settings(cfg), "fast_render": False}})
    with pytest.raises(DemoSettingsError, match="made with task.fast_render=false but this run has "
                                                "task.fast_render=true. Run with task.fast_render=false"):
        load_demos(cfg, 8, METAWORLD_ACTION_DIM, root=tmp_path)
    old = {key: value for key, value in env_settings(cfg).items() if key != "fast_render"}
    write_demo(demo_dir(cfg, tmp_path), {"env_settings": old})  # as the shipped demos: made at the default
    assert len(load_demos(cfg, 8, METAWORLD_ACTION_DIM, root=tmp_path)) == 1
    with pytest.raises(DemoSettingsError, match="made with task.fast_render=true"):
        load_demos(OmegaConf.merge(cfg, {"fast_render": False}), 8, METAWORLD_ACTION_DIM, root=tmp_path)
    libero = OmegaConf.merge(task_cfg("libero/libero_spatial"), {"fast_render": False})
    write_demo(demo_dir(libero, tmp_path), {"source": "libero_hdf5", "env_settings": {"action_repeat": 1}})
    assert len(load_demos(libero, 8, 4, root=tmp_path)) == 1
    assert "fast_render" not in env_settings(task_cfg("maniskill/pick_cube"))


def test_load_demos_reports_another_episode_length(tmp_path, caplog):
    """episode_length only moves where episodes are cut (a time limit): reported, not refused."""
    cfg = task_cfg("metaworld/plate_slide")
    write_demo(demo_dir(cfg, tmp_path), {"env_settings": env_settings(cfg)})
    with caplog.at_level(logging.WARNING, logger="mbrl.demos"):
        assert len(load_demos(OmegaConf.merge(cfg, {"episode_length": 10}), 8, METAWORLD_ACTION_DIM,
                              root=tmp_path)) == 1
    assert "made with task.episode_length=100, this run has 10" in caplog.text


def test_load_demos_warns_on_old_files_without_settings(tmp_path, caplog):
    cfg = task_cfg("metaworld/plate_slide")
    folder = demo_dir(cfg, tmp_path)
    write_demo(folder, {"action_repeat": 2, "episode_length": 100})  # as collected before env_settings
    write_demo(folder, {}, name="ep_0001_seed1.npz")
    with caplog.at_level(logging.WARNING, logger="mbrl.demos"):
        assert len(load_demos(cfg, 8, METAWORLD_ACTION_DIM, root=tmp_path)) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "do not record task.action_repeat, task.episode_length, " \
        "task.success_bonus, task.camera, task.flip_rows" in warnings[0]
    # what an old file does record is still checked
    with pytest.raises(DemoSettingsError, match="task.action_repeat=2 but this run has task.action_repeat=1"):
        load_demos(OmegaConf.merge(cfg, {"action_repeat": 1}), 8, METAWORLD_ACTION_DIM, root=tmp_path)


def test_shipped_demos_seed_the_real_replay_buffer():
    real_buffer = pytest.importorskip("mbrl.replay.real_buffer")
    cfg = task_cfg("metaworld/plate_slide")
    episodes = load_demos(cfg, cfg.image_size, METAWORLD_ACTION_DIM)
    buffer = real_buffer.RealReplayBuffer(capacity=10_000, image_size=cfg.image_size,
                                          action_dim=METAWORLD_ACTION_DIM, frame_stack=cfg.frame_stack,
                                          nstep=3, discount=0.99)
    for ep in episodes:
        buffer.add_episode(ep)
    assert buffer.num_episodes == SHIPPED_PER_TASK
    assert len(buffer) == SHIPPED_PER_TASK * cfg.episode_length


# ----- LIBERO converter -----
def write_libero_file(path: Path, lengths=(6, 9), size: int = 32, task: str = "put_the_bowl_on_the_plate"):
    """A file with the schema of LIBERO's create_dataset.py, holding demos of ``task`` (a bddl
    file stem). Image j of a demo has intensity 10*j in its top-left quadrant (and 0 elsewhere),
    so alignment, flips and mirroring are visible."""
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "language_instruction": task.replace("_", " ")})
        data.attrs["bddl_file_name"] = f"libero_spatial/{task}.bddl"
        for i, n in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            images = np.zeros((n, size, size, 3), np.uint8)
            for j in range(n):
                images[j, : size // 2, : size // 2] = 10 * j
            demo.create_group("obs").create_dataset("agentview_rgb", data=images)
            demo["obs"].create_dataset("eye_in_hand_rgb", data=images)
            actions = np.stack([np.full(7, j / 100) for j in range(n)]).astype(np.float64)
            demo.create_dataset("actions", data=actions)
            rewards = np.zeros(n, np.uint8)
            rewards[-1] = 1
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=rewards.copy())
            demo.create_dataset("states", data=np.zeros((n, 10)))
            demo.attrs["num_samples"] = n


def test_libero_converter(tmp_path):
    from mbrl.demos.libero import LiberoFormatError, convert_libero

    src = tmp_path / "put_the_bowl_on_the_plate_demo.hdf5"
    write_libero_file(src)
    paths = convert_libero(src, tmp_path / "out", image_size=16, task="libero/libero_spatial",
                           flip_rows=True, success_bonus=10.0)
    assert [p.name for p in paths] == ["put_the_bowl_on_the_plate_demo_demo_0.npz",
                                       "put_the_bowl_on_the_plate_demo_demo_1.npz"]
    ep = load_episode(paths[1], image_size=16, action_dim=7)
    assert len(ep) == 8  # 9 recorded images and actions -> 8 transitions
    # obs[t] is image t; action[t] is recorded action t+1 (the one that produced image t+1)
    np.testing.assert_allclose(ep.action[:, 0], np.arange(1, 9) / 100, atol=1e-6)
    # rows flipped (robosuite renders upside down, not mirrored): the marked quadrant is now bottom-left
    assert ep.obs[5, :, 12, 3].tolist() == [50, 50, 50]
    assert ep.obs[5, :, 3, 3].tolist() == [0, 0, 0] and ep.obs[5, :, 12, 12].tolist() == [0, 0, 0]
    assert ep.success.tolist() == [False] * 7 + [True]
    # dones[-1] = 1 only marks the end of the recording; our LIBERO env never terminates
    assert ep.terminal.dtype == bool and not ep.terminal.any()
    assert ep.reward[-1] == 11.0 and ep.reward[:-1].sum() == 0
    assert ep.meta["language"] == "put the bowl on the plate" and ep.meta["task"] == "libero/libero_spatial"
    upright = convert_libero(src, tmp_path / "raw", image_size=32, flip_rows=False, max_demos=1)
    raw = load_episode(upright[0])
    assert len(upright) == 1 and raw.obs[2, 0, 3, 3] == 20 and raw.obs[2, 0, 28, 28] == 0

    bad = tmp_path / "bad.hdf5"
    import h5py
    with h5py.File(bad, "w") as f:
        f.create_group("other")
    with pytest.raises(LiberoFormatError, match="no 'data' group"):
        convert_libero(bad, tmp_path / "x", 16)
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(LiberoFormatError, match="not a readable hdf5"):
        convert_libero(tmp_path / "text.hdf5", tmp_path / "x", 16)


def test_libero_converter_checks_the_task(tmp_path, caplog):
    import h5py

    from mbrl.demos.libero import LiberoFormatError, convert_libero, task_language

    src = tmp_path / "demo.hdf5"
    write_libero_file(src, lengths=(4,))
    ok = convert_libero(src, tmp_path / "ok", 16, expected_task="put_the_bowl_on_the_plate")
    assert load_episode(ok[0]).meta["libero_task"] == "put_the_bowl_on_the_plate"
    with pytest.raises(LiberoFormatError, match=r"holds demonstrations of LIBERO task put_the_bowl_on_the_plate, "
                                                r"but the task to convert for is turn_on_the_stove .*"
                                                r"turn_on_the_stove_demo.hdf5.*task.task_index"):
        convert_libero(src, tmp_path / "bad", 16, expected_task="turn_on_the_stove")
    assert not (tmp_path / "bad").exists()
    # without bddl_file_name: the language instruction is compared (LIBERO-90 names carry a scene)
    with h5py.File(src, "a") as f:
        del f["data"].attrs["bddl_file_name"]
    assert task_language("KITCHEN_SCENE10_put_the_bowl_on_the_plate") == "put the bowl on the plate"
    assert convert_libero(src, tmp_path / "lang", 16, expected_task="KITCHEN_SCENE10_put_the_bowl_on_the_plate")
    with pytest.raises(LiberoFormatError, match="LIBERO task 'put the bowl on the plate'"):
        convert_libero(src, tmp_path / "bad", 16, expected_task="put_the_bowl_on_the_stove")
    # no expected task (LIBERO not installed, none given): converted, with a warning
    with caplog.at_level(logging.WARNING, logger="mbrl.demos.libero"):
        assert convert_libero(src, tmp_path / "unchecked", 16)
    assert "cannot check" in caplog.text and "libero_task=" in caplog.text


def test_libero_task_name_needs_libero(monkeypatch):
    from mbrl.demos.libero import libero_task_name

    monkeypatch.setitem(sys.modules, "libero", None)  # as if LIBERO were not installed
    monkeypatch.setitem(sys.modules, "libero.libero", None)
    assert libero_task_name("libero_spatial", 0) is None


def test_converted_libero_demos_fit_the_libero_task(tmp_path):
    """Converted LIBERO demos record the settings they correspond to: one action per control
    step, the bonus, the camera, upright frames (task.flip_rows=false)."""
    from mbrl.demos.libero import convert_libero

    src = tmp_path / "demo.hdf5"
    write_libero_file(src, lengths=(4,))
    cfg = OmegaConf.merge(task_cfg("libero/libero_spatial"), {"image_size": 16})
    convert_libero(src, demo_dir(cfg, tmp_path / "root"), 16, flip_rows=True,
                   success_bonus=float(cfg.success_bonus), expected_task="put_the_bowl_on_the_plate")
    assert len(load_demos(cfg, 16, 7, root=tmp_path / "root")) == 1
    for key, value in [("flip_rows", True), ("action_repeat", 2), ("camera", "robot0_eye_in_hand"),
                       ("success_bonus", 0.0)]:
        with pytest.raises(DemoSettingsError, match=f"task.{key}="):
            load_demos(OmegaConf.merge(cfg, {key: value}), 16, 7, root=tmp_path / "root")
    # files from the old converter, which recorded rotate_180: the turned (mirrored) ones are refused
    # with the command to redo them; the unturned ones hold robosuite's frames, i.e. flip_rows=true
    path = episode_paths(demo_dir(cfg, tmp_path / "root"))[0]
    old = load_episode(path)
    settings = {k: v for k, v in old.meta["env_settings"].items() if k != "flip_rows"}
    old.meta["env_settings"] = {**settings, "rotate_180": False}
    save_episode(path, old)
    with pytest.raises(DemoSettingsError, match="rotate_180.*mirrored.*convert_demos.py format=libero"):
        load_demos(cfg, 16, 7, root=tmp_path / "root")
    old.meta["env_settings"] = {**settings, "rotate_180": True}
    save_episode(path, old)
    assert len(load_demos(OmegaConf.merge(cfg, {"flip_rows": True}), 16, 7, root=tmp_path / "root")) == 1
    with pytest.raises(DemoSettingsError, match="task.flip_rows=true"):
        load_demos(cfg, 16, 7, root=tmp_path / "root")


# ----- ManiSkill trajectory files -----
def write_maniskill_pair(stem: Path, steps=(4, 6), action_dim: int = 7, broken: str = ""):
    """A trajectory pair with the schema of ManiSkill 3's RecordEpisode / download_demo."""
    import h5py

    episodes = []
    with h5py.File(stem.with_suffix(".h5"), "w") as f:
        for i, n in enumerate(steps):
            g = f.create_group(f"traj_{i}")
            g.create_dataset("actions", data=np.full((n, action_dim), i, np.float32))
            g.create_dataset("terminated", data=np.zeros(n, bool))
            g.create_dataset("truncated", data=np.zeros(n, bool))
            g.create_dataset("success", data=np.arange(n) == n - 1)
            states = g.create_group("env_states")
            states.create_group("actors").create_dataset("cube", data=np.arange((n + 1) * 13,
                                                         dtype=np.float32).reshape(n + 1, 13))
            m = n if broken == "states" else n + 1
            states.create_group("articulations").create_dataset("panda", data=np.zeros((m, 31), np.float32))
            episodes.append({"episode_id": i, "episode_seed": 100 + i, "reset_kwargs": {"seed": 100 + i},
                             "control_mode": "pd_ee_delta_pose", "elapsed_steps": n,
                             "info": {"success": True}})
    meta = {"env_info": {"env_id": "PickCube-v1", "max_episode_steps": 50,
                         "env_kwargs": {"obs_mode": "none", "control_mode": "pd_ee_delta_pose"}},
            "source_type": "motionplanning", "episodes": episodes}
    if broken != "json":
        stem.with_suffix(".json").write_text(json.dumps(meta))
    return stem.with_suffix(".h5")


def test_maniskill_trajectory_reader(tmp_path):
    from mbrl.demos.maniskill import ManiSkillFormatError, read_env_info, read_trajectories, state_at

    h5 = write_maniskill_pair(tmp_path / "trajectory")
    env_info, episodes = read_env_info(h5)
    assert env_info["env_id"] == "PickCube-v1" and len(episodes) == 2
    trajs = list(read_trajectories(h5))
    assert [t.seed for t in trajs] == [100, 101] and trajs[1].actions.shape == (6, 7)
    assert trajs[1].control_mode == "pd_ee_delta_pose" and trajs[1].success[-1]
    state = state_at(trajs[0].env_states, 2)
    assert set(state) == {"actors", "articulations"}
    np.testing.assert_array_equal(state["actors"]["cube"], np.arange(26, 39))
    assert len(list(read_trajectories(h5, max_episodes=1))) == 1

    with pytest.raises(ManiSkillFormatError, match=r"short.h5: traj_0: env_states entries have different lengths"):
        list(read_trajectories(write_maniskill_pair(tmp_path / "short", broken="states")))
    with pytest.raises(ManiSkillFormatError, match="come as a pair"):
        read_env_info(write_maniskill_pair(tmp_path / "nojson", broken="json"))


def test_maniskill_seed_as_recordepisode_stores_it(tmp_path):
    from mbrl.demos.maniskill import ManiSkillFormatError, episode_seed, read_trajectories

    h5 = write_maniskill_pair(tmp_path / "trajectory")
    meta = json.loads(h5.with_suffix(".json").read_text())
    meta["episodes"][0]["reset_kwargs"]["seed"] = [7]  # RecordEpisode's list of one seed
    h5.with_suffix(".json").write_text(json.dumps(meta))
    assert [t.seed for t in read_trajectories(h5)] == [7, 101]
    for bad in ([1, 2], "7", None):
        with pytest.raises(ManiSkillFormatError, match="expected an int or a one-item list"):
            episode_seed(bad, "here")


def test_maniskill_replay_in_our_env(tmp_path):
    """Record a short random trajectory in our ManiSkill env in ManiSkill's schema, replay it
    with the converter, and get the same frames back (needs the maniskill extra)."""
    pytest.importorskip("mani_skill")
    import h5py

    from mbrl.demos.maniskill import convert_maniskill, maniskill_base_env
    from mbrl.envs import make_env

    cfg = task_cfg("maniskill/pick_cube")
    env = make_env(cfg, seed=0)
    base = maniskill_base_env(env)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=5)

    def flat_state():
        import torch
        def squeeze(x):
            return {k: squeeze(v) for k, v in x.items()} if isinstance(x, dict) else \
                (x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x))[0]
        return squeeze(base.get_state_dict())

    states, actions, frames = [flat_state()], [], [obs[-3:]]
    for _ in range(4):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, *_ = env.step(a)
        actions.append(a)
        states.append(flat_state())
        frames.append(obs[-3:])
    env.close()

    def stack(items):
        first = items[0]
        return {k: stack([it[k] for it in items]) for k in first} if isinstance(first, dict) else np.stack(items)

    def write(group, tree):
        for k, v in tree.items():
            write(group.create_group(k), v) if isinstance(v, dict) else group.create_dataset(k, data=v)

    h5 = tmp_path / "traj.h5"
    with h5py.File(h5, "w") as f:
        g = f.create_group("traj_0")
        g.create_dataset("actions", data=np.stack(actions))
        write(g.create_group("env_states"), stack(states))
    (tmp_path / "traj.json").write_text(json.dumps({
        "env_info": {"env_id": cfg.name, "env_kwargs": {}},
        "episodes": [{"episode_id": 0, "episode_seed": 5, "control_mode": cfg.control_mode,
                      "elapsed_steps": 4}]}))
    paths = convert_maniskill(h5, cfg, tmp_path / "out", success_only=False)
    ep = load_episode(paths[0], image_size=cfg.image_size)
    assert len(ep) == 4
    np.testing.assert_allclose(ep.action, np.stack(actions))
    assert np.abs(ep.obs.astype(int) - np.stack(frames).astype(int)).mean() < 2.0

    # elapsed_steps is optional in the json: a demo longer than the RL episode is still kept whole
    (tmp_path / "traj.json").write_text(json.dumps({
        "env_info": {"env_id": cfg.name, "env_kwargs": {}},
        "episodes": [{"episode_id": 0, "episode_seed": 5, "control_mode": cfg.control_mode}]}))
    short = OmegaConf.merge(cfg, {"episode_length": 2})
    paths = convert_maniskill(h5, short, tmp_path / "out_short", success_only=False)
    assert len(load_episode(paths[0], image_size=cfg.image_size)) == 4


def test_convert_script_libero(tmp_path):
    from mbrl.demos.libero import libero_task_name

    src = tmp_path / "task_demo.hdf5"  # task 3's demos (its name is known only where LIBERO is installed)
    write_libero_file(src, lengths=(5,), task=libero_task_name("libero_spatial", 3) or "put_the_bowl_on_the_plate")
    out = tmp_path / "converted"
    run = subprocess.run([sys.executable, str(REPO / "scripts/convert_demos.py"), "format=libero",
                          f"input={src}", "task=libero/libero_spatial", "task.task_index=3", f"out={out}"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    ep = load_episode(out / "task_demo_demo_0.npz", image_size=64, action_dim=7)
    assert len(ep) == 4 and ep.meta["flip_rows"] is True  # upright, since task.flip_rows=false
    assert ep.meta["env_settings"] == {"action_repeat": 1, "success_bonus": 10.0, "camera": "agentview",
                                       "flip_rows": False}
    wrong = subprocess.run([sys.executable, str(REPO / "scripts/convert_demos.py"), "format=libero",
                            f"input={src}", "task=libero/libero_spatial", "libero_task=turn_on_the_stove",
                            f"out={tmp_path / 'wrong'}"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(wrong, "but the task to convert for is turn_on_the_stove")
    cfg = task_cfg("libero/libero_spatial")
    assert demo_dir(cfg).parts[-3:] == ("libero", "libero_spatial", "task_0")


def load_convert_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_demos_script", REPO / "scripts" / "convert_demos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base="1.3"):
        return compose("convert_demos", overrides=["input=x.h5", *overrides])


def test_convert_script_refuses_another_suites_task(tmp_path):
    script = load_convert_script()
    assert script.ConvertSettingsError in script.USER_ERRORS
    for fmt, task, fix in [("libero", "metaworld/plate_slide", "task=libero/libero_spatial task.task_index=0"),
                           ("maniskill", "libero/libero_spatial", "task=maniskill/pick_cube")]:
        with pytest.raises(script.ConvertSettingsError, match=f"format={fmt} converts {fmt} demonstrations but "
                                                              f"task is {task.split('/')[0]}/.*e.g. {fix}$"):
            script.convert(convert_cfg(f"format={fmt}", f"task={task}", "libero_task=x"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_libero_converter_reads_task_cameras_stream(tmp_path, monkeypatch):
    from mbrl.demos.libero import LiberoFormatError, camera_stream

    assert camera_stream("agentview") == "agentview_rgb" and camera_stream("robot0_eye_in_hand") == "eye_in_hand_rgb"
    with pytest.raises(LiberoFormatError, match="no image stream of task.camera=frontview.*camera=<stream>"):
        camera_stream("frontview")
    script = load_convert_script()
    calls = []
    monkeypatch.setattr(script, "convert_libero", lambda *a, **kw: calls.append(kw["camera"]))
    base = ["format=libero", "task=libero/libero_spatial", "libero_task=x"]
    script.convert(convert_cfg(*base, "task.camera=robot0_eye_in_hand"), tmp_path)
    script.convert(convert_cfg(*base, "task.camera=robot0_eye_in_hand", "camera=agentview_rgb"), tmp_path)
    assert calls == ["eye_in_hand_rgb", "agentview_rgb"]


def test_convert_script_reports_format_errors_in_one_line(tmp_path):
    h5 = write_maniskill_pair(tmp_path / "nojson", broken="json")
    run = run_script("convert_demos.py", "format=maniskill", f"input={h5}", "task=maniskill/pick_cube",
                     f"out={tmp_path / 'out'}")
    assert_one_line_error(run, "nojson.json is missing: ManiSkill trajectories come as a pair")


def test_motion_planning_names_what_to_install(monkeypatch):
    import types

    from mbrl.demos.maniskill import MissingMotionPlannerError, require_motion_planning
    from mbrl.envs import MissingSimulatorError

    monkeypatch.setitem(sys.modules, "mani_skill", None)  # import fails
    with pytest.raises(MissingSimulatorError, match=r"ManiSkill 3 is not installed: pip install -e '\.\[maniskill\]'"):
        require_motion_planning()
    monkeypatch.setitem(sys.modules, "mani_skill", types.ModuleType("mani_skill"))
    monkeypatch.setitem(sys.modules, "mplib", None)
    with pytest.raises(MissingMotionPlannerError, match="motion planners need mplib.*pip install mplib"):
        require_motion_planning()


def test_numpy_conflict():
    from mbrl.demos.maniskill import numpy_conflict

    message = numpy_conflict("2.4.6", "0.1.1")
    assert "(mplib 0.1.1) crashes with numpy>=2 and this venv has numpy 2.4.6" in message
    assert "'numpy<2' 'opencv-python<4.12'" in message and "format=maniskill" in message
    assert "torch==2.13.0" in message  # unpinned, pip would take a CUDA torch of several GB
    assert numpy_conflict("2.0.0", None) is not None  # no metadata: taken to be the pinned 0.1.1
    assert numpy_conflict("1.26.4", "0.1.1") is None and numpy_conflict("2.1.0", "0.2.1") is None


@pytest.mark.parametrize("numpy_version", ["2.0.0", "1.26.4"])
def test_motion_planning_refuses_numpy_2_without_touching_mplib(tmp_path, monkeypatch, numpy_version):
    """mplib 0.1.1 segfaults under numpy 2 (no traceback, no message): the check must come
    before mplib is imported. The mplib here raises when imported."""
    import types

    from mbrl.demos.maniskill import MissingMotionPlannerError, require_motion_planning

    (tmp_path / "mplib").mkdir()
    (tmp_path / "mplib" / "__init__.py").write_text("raise AssertionError('mplib was imported')\n")
    (tmp_path / "mplib-0.1.1.dist-info").mkdir()
    (tmp_path / "mplib-0.1.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mplib\nVersion: 0.1.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mplib", raising=False)
    monkeypatch.setitem(sys.modules, "mani_skill", types.ModuleType("mani_skill"))
    monkeypatch.setattr(np, "__version__", numpy_version)
    if numpy_version.startswith("2"):
        with pytest.raises(MissingMotionPlannerError, match=r"crashes with numpy>=2 and this venv has numpy 2\.0\.0"):
            require_motion_planning()
    else:
        require_motion_planning()
    assert "mplib" not in sys.modules


def test_maniskill_motion_planning_collection(tmp_path):
    """ManiSkill's own motion planner -> ManiSkill's control-mode conversion -> replay in our env."""
    refusal = _maniskill_expert_refusal()
    if refusal:
        pytest.skip(f"ManiSkill's motion planner cannot run in this venv (collect_demos.py says: ...{refusal}); "
                    "test_collect_script_user_errors_are_one_line checks that refusal")
    from mbrl.demos.maniskill import collect_motionplanning

    cfg = task_cfg("maniskill/pick_cube")
    result = collect_motionplanning(cfg, 1, tmp_path, seed=0)
    ep = load_episode(result.paths[0], image_size=cfg.image_size, action_dim=7)
    assert result.paths[0].name == "ep_0000_seed0.npz"
    assert ep.success.any() and ep.meta["source"] == "maniskill_motionplanning"
