"""mbrl.envs on the real simulators (tiny frames, short episodes).

Meta-World and DMC run everywhere (CI installs them); ManiSkill and LIBERO tests are skipped
unless their extras are installed (bash scripts/install_sims.sh maniskill libero).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mbrl.envs import MissingSimulatorError, UnknownTaskError, list_tasks, make_env

CFGS = Path(__file__).resolve().parents[1] / "cfgs"
SIZE = 32  # frame size for the tests: small, still shows the scene
SEED = 7
# reach-v3's hand moves at most 1 cm per axis per simulator step: in 40 steps at full speed toward
# the goal it enters the 5 cm success ball and leaves it again (with SEED: steps 25-32 succeed)
THROUGH_GOAL_REPEAT = 40


def task_cfg(task: str, *overrides: str):
    """Compose cfg.task exactly as the training scripts do: task=<suite>/<task> plus overrides."""
    with initialize_config_dir(config_dir=str(CFGS), version_base="1.3"):
        cfg = compose(overrides=[f"+task={task}", f"task.image_size={SIZE}", *overrides])
    return cfg.task


def run(env, actions):
    out = [env.reset()]
    out += [env.step(a) for a in actions]
    return out


def random_actions(env, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n,) + env.action_space.shape).astype(np.float32)


def check_spaces(env, cfg):
    obs, info = env.reset()
    stack, size = 3 * cfg.frame_stack, cfg.image_size
    assert env.observation_space.shape == (stack, size, size) and env.observation_space.dtype == np.uint8
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert obs.shape == (stack, size, size) and obs.dtype == np.uint8
    # after reset every slot of the stack holds the first frame
    for k in range(cfg.frame_stack):
        np.testing.assert_array_equal(obs[3 * k:3 * k + 3], obs[-3:])
    assert obs.std() > 0, "blank frame"
    assert info["success"] is False
    assert info["state"].dtype == np.float32 and info["state"].ndim == 1
    obs2, reward, terminated, truncated, info2 = env.step(env.action_space.sample())
    assert obs2.shape == obs.shape and obs2.dtype == np.uint8
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    assert isinstance(info2["success"], bool) and info2["state"].shape == info["state"].shape
    # the stack shifted by one frame: the old newest frame is now second newest
    np.testing.assert_array_equal(obs2[-6:-3], obs[-3:])
    return obs, info


def top_vs_bottom(frame_chw):
    gray = frame_chw.astype(np.float32).mean(0)
    quarter = gray.shape[0] // 4
    return gray[:quarter].mean(), gray[-quarter:].mean()


# --------------------------------------------------------------------------- Meta-World
@pytest.fixture(scope="module")
def mw_cfg():
    pytest.importorskip("metaworld")
    return task_cfg("metaworld/plate_slide", "task.episode_length=5")


def raw_metaworld(name, seed):
    """Meta-World's own env set up the way our backend documents (goal observable, resampled)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[name + "-goal-observable"](seed=seed)
    env._freeze_rand_vec, env.seeded_rand_vec = False, True
    return env


def test_metaworld_spaces_and_defaults(mw_cfg):
    assert (mw_cfg.action_repeat, mw_cfg.frame_stack, mw_cfg.success_bonus) == (2, 3, 10.0)
    assert mw_cfg.camera == "corner" and mw_cfg.flip_rows
    env = make_env(mw_cfg, seed=SEED)
    try:
        _, info = check_spaces(env, mw_cfg)
        assert env.action_space.shape == (4,)
        assert info["state"].shape == (39,)  # what Meta-World's scripted policies read
    finally:
        env.close()


def test_metaworld_action_repeat_matches_raw_simulator(mw_cfg):
    env = make_env(mw_cfg, seed=SEED)
    raw = raw_metaworld(mw_cfg.name, SEED)
    try:
        _, info = env.reset()
        raw_obs, _ = raw.reset()
        np.testing.assert_allclose(info["state"], raw_obs.astype(np.float32))
        for action in random_actions(env, 4):
            _, reward, _, _, info = env.step(action)
            raw_reward, raw_success = 0.0, False
            for _ in range(mw_cfg.action_repeat):
                raw_obs, r, _, _, raw_info = raw.step(action)
                raw_reward += r
                raw_success |= bool(raw_info["success"])
            expected = raw_reward + (mw_cfg.success_bonus if raw_success else 0.0)
            assert reward == pytest.approx(expected, rel=1e-6)
            assert info["success"] == raw_success
            np.testing.assert_allclose(info["state"], raw_obs.astype(np.float32), rtol=1e-6)
    finally:
        env.close()
        raw.close()


def test_metaworld_expert_success_gets_bonus():
    """The scripted expert, fed info['state'], solves plate-slide; success steps get +10."""
    pytest.importorskip("metaworld")
    from metaworld.policies import SawyerPlateSlideV3Policy
    cfg = task_cfg("metaworld/plate_slide")
    env = make_env(cfg, seed=SEED)
    raw = raw_metaworld(cfg.name, SEED)
    policy = SawyerPlateSlideV3Policy()
    try:
        _, info = env.reset()
        raw.reset()
        for _ in range(cfg.episode_length):
            action = np.clip(policy.get_action(info["state"]), -1, 1)
            _, reward, _, truncated, info = env.step(action)
            raw_reward = sum(raw.step(action)[1] for _ in range(cfg.action_repeat))
            if info["success"]:
                assert reward == pytest.approx(raw_reward + cfg.success_bonus, rel=1e-6)
                break
            assert reward == pytest.approx(raw_reward, rel=1e-6)
        assert info["success"], "the expert never succeeded: state or action scaling is wrong"
    finally:
        env.close()
        raw.close()


def test_metaworld_success_if_any_repeated_step_succeeds():
    """An agent step succeeds (and gets the bonus) if any of its simulator steps did, not only
    its last: reach-v3's hand driven straight at the goal passes through it within one step."""
    pytest.importorskip("metaworld")
    cfg = task_cfg("metaworld/reach", f"task.action_repeat={THROUGH_GOAL_REPEAT}", "task.episode_length=1")
    env = make_env(cfg, seed=SEED)
    raw = raw_metaworld(cfg.name, SEED)
    try:
        _, info = env.reset()
        raw.reset()
        hand, goal = info["state"][:3], info["state"][-3:]  # the 39-dim state starts with the hand, ends with the goal
        action = np.append((goal - hand) / np.abs(goal - hand).max(), 0.0).astype(np.float32)  # full speed
        _, reward, _, _, info = env.step(action)
        raw_steps = [raw.step(action) for _ in range(cfg.action_repeat)]
    finally:
        env.close()
        raw.close()
    raw_success = [bool(step[4]["success"]) for step in raw_steps]
    assert any(raw_success) and not raw_success[-1], f"the hand did not pass through the goal: {raw_success}"
    assert info["success"] is True
    assert reward == pytest.approx(sum(step[1] for step in raw_steps) + cfg.success_bonus, rel=1e-6)


def test_metaworld_step_limit(mw_cfg):
    env = make_env(mw_cfg, seed=SEED)
    try:
        env.reset()
        flags = [env.step(env.action_space.sample())[2:4] for _ in range(mw_cfg.episode_length)]
        assert flags == [(False, False)] * (mw_cfg.episode_length - 1) + [(False, True)]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(env.action_space.sample())
        env.reset()  # a new episode starts fine
        assert env.step(env.action_space.sample())[3] is False
    finally:
        env.close()


def test_metaworld_frames_upright(mw_cfg):
    """Corner camera is mounted upside down: with flip_rows the table is at the bottom and the
    (black, fast-render) sky at the top; without the flip it is the other way round."""
    for flip in (True, False):
        env = make_env(OmegaConf.merge(mw_cfg, {"flip_rows": flip, "image_size": 64}), seed=SEED)
        try:
            obs, _ = env.reset()
            top, bottom = top_vs_bottom(obs[-3:])
            assert (top < bottom) == flip, (flip, top, bottom)
        finally:
            env.close()


def test_metaworld_seeded_determinism(mw_cfg):
    def episode(seed):
        env = make_env(mw_cfg, seed=seed)
        try:
            steps = run(env, random_actions(env, 3))
            steps.append(env.reset())  # the next episode's placement is seeded too
            return np.stack([s[0] for s in steps]), [s[1] for s in steps[1:-1]]
        finally:
            env.close()
    frames_a, rewards_a = episode(SEED)
    frames_b, rewards_b = episode(SEED)
    np.testing.assert_array_equal(frames_a, frames_b)
    assert rewards_a == rewards_b
    assert not np.array_equal(frames_a[-1], frames_a[0]), "goal not resampled on reset"
    frames_c, _ = episode(SEED + 1)
    assert not np.array_equal(frames_a[0], frames_c[0]), "seed does not change the scene"


def test_metaworld_reset_with_seed_repeats_scene(mw_cfg):
    env = make_env(mw_cfg, seed=SEED)
    try:
        first, _ = env.reset(seed=3)
        env.reset()
        again, _ = env.reset(seed=3)
        np.testing.assert_array_equal(first, again)
    finally:
        env.close()


def test_fast_render_only_changes_looks(mw_cfg):
    """Default settings draw the sky (skybox); fast ones leave it black. Same scene otherwise."""
    tops = {}
    for fast in (True, False):
        env = make_env(OmegaConf.merge(mw_cfg, {"fast_render": fast}), seed=SEED)
        try:
            obs, info = env.reset()
            tops[fast] = top_vs_bottom(obs[-3:])[0]
        finally:
            env.close()
    assert tops[False] > tops[True] + 10


def test_all_metaworld_task_files_compose():
    pytest.importorskip("metaworld")
    files = sorted((CFGS / "task" / "metaworld").glob("*.yaml"))
    assert len(files) == 50
    valid = set(list_tasks("metaworld"))
    for f in files:
        cfg = task_cfg(f"metaworld/{f.stem}")
        assert cfg.name in valid and cfg.name == f.stem.replace("_", "-") + "-v3"


# --------------------------------------------------------------------------- DMC
@pytest.fixture(scope="module")
def dmc_cfg():
    pytest.importorskip("dm_control")
    return task_cfg("dmc/walker_walk", "task.episode_length=4")


def test_dmc_spaces_and_defaults(dmc_cfg):
    full = task_cfg("dmc/walker_walk")
    assert (full.action_repeat, full.episode_length, full.camera) == (2, None, 0)  # None: DMC's limit
    assert task_cfg("dmc/quadruped_walk").camera == 2
    env = make_env(dmc_cfg, seed=SEED)
    try:
        _, info = check_spaces(env, dmc_cfg)
        assert env.action_space.shape == (6,) and info["state"].shape == (24,)
    finally:
        env.close()


def test_dmc_action_repeat_matches_raw_simulator(dmc_cfg):
    from dm_control import suite
    env = make_env(dmc_cfg, seed=SEED)
    raw = suite.load("walker", "walk", task_kwargs={"random": SEED})
    try:
        env.reset()
        raw.reset()
        for action in random_actions(env, dmc_cfg.episode_length):
            _, reward, _, _, info = env.step(action)
            raw_reward = sum(raw.step(action).reward for _ in range(dmc_cfg.action_repeat))
            assert reward == pytest.approx(raw_reward, rel=1e-6)
            assert info["success"] is False
        state = np.concatenate([np.ravel(v) for v in raw.step(np.zeros(6)).observation.values()])
        assert state.shape == info["state"].shape
    finally:
        env.close()


def test_dmc_step_limit_and_determinism(dmc_cfg):
    def episode():
        env = make_env(dmc_cfg, seed=SEED)
        try:
            steps = run(env, random_actions(env, dmc_cfg.episode_length))
            return steps
        finally:
            env.close()
    a, b = episode(), episode()
    assert [s[3] for s in a[1:]] == [False] * (dmc_cfg.episode_length - 1) + [True]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
    assert [s[1] for s in a[1:]] == [s[1] for s in b[1:]]


def test_dmc_episode_is_dmcs_time_limit_at_any_action_repeat():
    """By default an episode lasts DMC's 1000 simulator steps whatever task.action_repeat, as in
    DrQ-v2 (a fixed 500 agent steps at repeat 8 ran 4000 and returned 2822, above DMC's maximum)."""
    pytest.importorskip("dm_control")
    from mbrl.envs.dmc_env import TIME_LIMIT_SIM_STEPS

    for repeat, length in ((2, 500), (3, 334), (8, 125)):  # 3: 334 steps, as DrQ-v2 (which cuts the last one short)
        cfg = task_cfg("dmc/cartpole_balance", f"task.action_repeat={repeat}", "task.frame_stack=1")
        env = make_env(cfg, seed=SEED)
        try:
            assert env.episode_length == length, repeat
            if repeat == 8:  # the reviewer's case, played out
                steps = run(env, np.zeros((length, 1), np.float32))
                assert [s[3] for s in steps[1:]] == [False] * (length - 1) + [True]
                assert sum(s[1] for s in steps[1:]) <= TIME_LIMIT_SIM_STEPS  # rewards are in [0, 1]
        finally:
            env.close()
    explicit = make_env(task_cfg("dmc/cartpole_balance", "task.action_repeat=8", "task.episode_length=7"), seed=SEED)
    assert explicit.episode_length == 7
    explicit.close()


def test_dmc_longer_episode_than_dmcs_is_warned_about(caplog):
    from mbrl.envs.dmc_env import TIME_LIMIT_SIM_STEPS, episode_length

    with caplog.at_level("WARNING", logger="mbrl.envs.dmc_env"):
        assert episode_length(TIME_LIMIT_SIM_STEPS // 4, 4) == TIME_LIMIT_SIM_STEPS // 4  # exactly DMC's
        assert episode_length(None, 4) == TIME_LIMIT_SIM_STEPS // 4
        assert not caplog.records
        assert episode_length(500, 8) == 500  # the user's choice, kept ...
    assert len(caplog.records) == 1  # ... but said
    assert "task.episode_length=500 x task.action_repeat=8 = 4000 simulator steps" in caplog.text
    with pytest.raises(ValueError, match="task.action_repeat must be a positive integer"):
        episode_length(None, 0)


def test_dmc_reset_seed_decides_the_start(dmc_cfg):
    """reset(seed=s) starts where any env reset with s starts, whatever the env's own seed and
    history; another s starts elsewhere (walker_walk draws its joint angles at random)."""
    envs = [make_env(dmc_cfg, seed=seed) for seed in (SEED, SEED + 1)]
    try:
        envs[1].reset()  # a history the other env lacks
        envs[1].step(envs[1].action_space.sample())
        starts = [env.reset(seed=3) for env in envs]
        other = envs[0].reset(seed=4)
    finally:
        for env in envs:
            env.close()
    (obs_a, info_a), (obs_b, info_b) = starts
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    assert not np.array_equal(obs_a, other[0]), "reset(seed=4) starts where reset(seed=3) does"


def test_dmc_frames_upright(dmc_cfg):
    """Walker from camera 0: the floor is in the lower part, the (black) sky above."""
    env = make_env(OmegaConf.merge(dmc_cfg, {"image_size": 64}), seed=SEED)
    try:
        obs, _ = env.reset()
        top, bottom = top_vs_bottom(obs[-3:])
        assert top < bottom
    finally:
        env.close()


def test_all_dmc_task_files_compose():
    pytest.importorskip("dm_control")
    valid = set(list_tasks("dmc"))
    files = sorted((CFGS / "task" / "dmc").glob("*.yaml"))
    assert len(files) >= 20
    for f in files:
        assert task_cfg(f"dmc/{f.stem}").name in valid, f.stem


def test_dmc_names_split_at_the_longest_known_domain():
    from mbrl.envs.dmc_env import split_name

    tasks = [("point_mass", "easy"), ("point", "x"), ("humanoid", "run"), ("humanoid_CMU", "run"),
             ("lqr", "lqr_2_1"), ("ball_in_cup", "catch"), ("walker", "walk")]
    assert split_name("point_mass_easy", tasks) == ("point_mass", "easy")
    assert split_name("point_x", tasks) == ("point", "x")
    assert split_name("humanoid_CMU_run", tasks) == ("humanoid_CMU", "run")
    assert split_name("humanoid_run", tasks) == ("humanoid", "run")
    assert split_name("lqr_lqr_2_1", tasks) == ("lqr", "lqr_2_1")
    assert split_name("cup_catch", tasks) == split_name("ball_in_cup_catch", tasks) == ("ball_in_cup", "catch")
    with pytest.raises(ValueError, match="'walker_fly' is not a dm_control task.*list_tasks"):
        split_name("walker_fly", tasks)


def test_every_listed_dmc_task_builds():
    """Every name list_tasks('dmc') offers is accepted by make_env and steps (point_mass_easy,
    humanoid_CMU_run, ... have underscores in the domain)."""
    pytest.importorskip("dm_control")
    names = list_tasks("dmc")
    assert {"point_mass_easy", "humanoid_CMU_run", "cup_catch", "walker_walk"} <= set(names)
    for name in names:
        cfg = {"suite": "dmc", "name": name, "image_size": 16, "frame_stack": 1, "action_repeat": 1,
               "episode_length": 2, "success_bonus": 0.0, "fast_render": True, "camera": 0}
        env = make_env(cfg, seed=0)
        try:
            env.reset()
            obs, *_ = env.step(env.action_space.sample())
            assert obs.shape == (3, 16, 16), name
        finally:
            env.close()


# --------------------------------------------------------------------------- bad input
def test_boolean_task_keys_are_parsed_strictly():
    from mbrl.envs import boolean

    for value in (True, 1, "true", "True", " YES ", "1", np.bool_(True)):
        assert boolean(value) is True, value
    for value in (False, 0, "false", "FALSE", "no", "0", np.bool_(False)):
        assert boolean(value) is False, value
    for value in ("maybe", "", 2, -1, 0.5, None, [True]):
        with pytest.raises(ValueError, match="expected true/false"):
            boolean(value)


def test_boolean_task_key_from_a_string(mw_cfg):
    """flip_rows="false" (a string, as from an env var or a CSV) must not flip: it did with bool()."""
    plain = OmegaConf.to_container(mw_cfg)
    frames = {}
    for flip in (False, "false", "0", True, "yes"):
        env = make_env({**plain, "flip_rows": flip}, seed=SEED)
        try:
            frames[flip] = env.reset(seed=SEED)[0]
        finally:
            env.close()
    np.testing.assert_array_equal(frames["false"], frames[False])
    np.testing.assert_array_equal(frames["0"], frames[False])
    np.testing.assert_array_equal(frames["yes"], frames[True])
    assert not np.array_equal(frames[True], frames[False])
    with pytest.raises(ValueError, match=r"task.flip_rows='sometimes' is not a valid boolean.*true/false"):
        make_env({**plain, "flip_rows": "sometimes"}, seed=SEED)


def test_unknown_task_names_close_matches():
    pytest.importorskip("metaworld")
    with pytest.raises(UnknownTaskError, match="plate-slide-v3"):
        make_env(task_cfg("metaworld/plate_slide", "task.name=plate-slide-v2"), seed=0)
    with pytest.raises(UnknownTaskError, match="unknown suite 'metawrld'.*metaworld"):
        make_env({"suite": "metawrld", "name": "x"}, seed=0)
    with pytest.raises(UnknownTaskError):
        list_tasks("atari")


def test_missing_simulator_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if it were not installed
    with pytest.raises(MissingSimulatorError, match=r"pip install -e '\.\[metaworld\]'.*install_sims\.sh metaworld"):
        make_env(task_cfg("metaworld/plate_slide"), seed=0)
    monkeypatch.setitem(sys.modules, "dm_control", None)
    with pytest.raises(MissingSimulatorError, match=r"\.\[dmc\]"):
        list_tasks("dmc")


def test_bad_config_and_action_are_explained(mw_cfg):
    with pytest.raises(ValueError, match="missing the key 'frame_stack'"):
        make_env({k: v for k, v in OmegaConf.to_container(mw_cfg).items() if k != "frame_stack"}, seed=0)
    with pytest.raises(ValueError, match="camera 'nope' is not in this scene"):
        make_env(OmegaConf.merge(mw_cfg, {"camera": "nope"}), seed=0)
    for key in ("image_size", "frame_stack"):  # refused before MuJoCo gets a 0-pixel framebuffer
        with pytest.raises(ValueError, match=f"task.{key} must be a positive integer, got 0"):
            make_env(OmegaConf.merge(mw_cfg, {key: 0}), seed=0)
    env = make_env(mw_cfg, seed=SEED)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4))
        env.reset()
        with pytest.raises(ValueError, match=r"shape \(4,\)"):
            env.step(np.zeros(3))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full(4, np.nan))
    finally:
        env.close()


# --------------------------------------------------------------------------- ManiSkill, LIBERO
def _generic_checks(cfg):
    env = make_env(cfg, seed=SEED)
    try:
        check_spaces(env, cfg)
        actions = random_actions(env, cfg.episode_length)
        a = run(env, actions)
        assert [s[3] for s in a[1:]] == [False] * (cfg.episode_length - 1) + [True]
        b = run(env, actions[:0])  # next episode: fine after truncation
        assert b[0][0].shape == a[0][0].shape
        first, _ = env.reset(seed=SEED)
        again, _ = env.reset(seed=SEED)
        np.testing.assert_array_equal(first, again)
    finally:
        env.close()


@pytest.mark.maniskill
def test_maniskill_pick_cube():
    from mbrl.envs.maniskill_env import prepare_vulkan
    prepare_vulkan()
    pytest.importorskip("mani_skill", reason="ManiSkill not installed (bash scripts/install_sims.sh maniskill)")
    cfg = task_cfg("maniskill/pick_cube", "task.episode_length=3")
    assert cfg.control_mode == "pd_ee_delta_pose"
    _generic_checks(cfg)


@pytest.mark.maniskill
def test_maniskill_plain_resets_ignore_the_global_torch_rng():
    """Two envs built with the same seed meet the same scenes on plain reset()s, whatever the
    agent draws from torch in between (ManiSkill 3 uses the global torch RNG without
    enhanced_determinism)."""
    import torch

    from mbrl.envs.maniskill_env import prepare_vulkan
    prepare_vulkan()
    pytest.importorskip("mani_skill", reason="ManiSkill not installed (bash scripts/install_sims.sh maniskill)")
    cfg = task_cfg("maniskill/pick_cube", "task.episode_length=1", "task.frame_stack=1")
    envs = [make_env(cfg, seed=SEED) for _ in range(2)]
    try:
        starts = [[], []]
        for env, episodes in zip(envs, starts):
            for _ in range(2):  # two episodes, the agent drawing from torch between them
                episodes.append(env.reset())
                torch.rand(1)
    finally:
        for env in envs:
            env.close()
    for (obs_a, info_a), (obs_b, info_b) in zip(*starts):
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(info_a["state"], info_b["state"])
    assert not np.array_equal(starts[0][0][1]["state"], starts[0][1][1]["state"]), "no new scene per episode"


@pytest.mark.maniskill
def test_maniskill_success_gets_the_bonus_once_and_ends_the_episode_only_when_asked():
    """ManiSkill's ``info["success"]`` (from its ``evaluate``) is forced on from the second step."""
    import torch

    from mbrl.demos.maniskill import maniskill_base_env
    from mbrl.envs.maniskill_env import prepare_vulkan
    prepare_vulkan()
    pytest.importorskip("mani_skill", reason="ManiSkill not installed (bash scripts/install_sims.sh maniskill)")
    for terminate in (False, True):
        cfg = task_cfg("maniskill/pick_cube", "task.episode_length=3", "task.reward_mode=sparse",
                       f"task.terminate_on_success={terminate}")
        env = make_env(cfg, seed=SEED)
        try:
            base, forced = maniskill_base_env(env), {"on": False}
            evaluate = base.evaluate

            def forced_evaluate(*args, **kwargs):
                out = evaluate(*args, **kwargs)
                if forced["on"]:
                    out["success"] = torch.ones_like(out["success"])
                return out
            base.evaluate = forced_evaluate
            env.reset(seed=SEED)
            _, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, np.float32))
            assert (reward, terminated, info["success"]) == (0.0, False, False)
            forced["on"] = True
            _, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, np.float32))
            # sparse reward: 1 on success, plus the bonus once per agent step (over the action repeat)
            assert (reward, terminated, truncated, info["success"]) == (1.0 + cfg.success_bonus, terminate, False, True)
        finally:
            env.close()


@pytest.mark.maniskill
def test_maniskill_unknown_control_or_reward_mode_is_one_line_naming_the_setting():
    from mbrl.envs.maniskill_env import prepare_vulkan
    prepare_vulkan()
    pytest.importorskip("mani_skill", reason="ManiSkill not installed (bash scripts/install_sims.sh maniskill)")
    from mbrl.utils import ConfigValueError  # what the entry points print as one line

    for setting in ("task.control_mode=pd_ee_delta_posx", "task.reward_mode=foo"):
        with pytest.raises(ConfigValueError, match=r"refused task.control_mode=.* or task.reward_mode="):
            make_env(task_cfg("maniskill/pick_cube", setting), seed=SEED)


@pytest.mark.maniskill
def test_maniskill_without_a_vulkan_driver_names_the_fix():
    """A fresh checkout has no .sims/ (git-ignored): SAPIEN's bare Vulkan error becomes the simulator
    error the entry points print as one line. Own process: SAPIEN starts Vulkan once per process."""
    import os
    import subprocess

    pytest.importorskip("mani_skill", reason="ManiSkill not installed (bash scripts/install_sims.sh maniskill)")
    probe = ("import sys; sys.path.insert(0, 'tests'); from test_envs import task_cfg; from mbrl.envs import make_env\n"
             "try:\n    make_env(task_cfg('maniskill/pick_cube'), seed=0)\n"
             "except Exception as e:\n    print(type(e).__name__, e)")
    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=CFGS.parent, env=env, capture_output=True, text=True,
                         timeout=300).stdout
    assert out.startswith("MissingSimulatorError ManiSkill could not start Vulkan rendering"), out
    assert "install_sims.sh maniskill" in out and "MBRL_SIMS_DIR" in out and "VK_ICD_FILENAMES" in out


@pytest.mark.libero
def test_libero_success_is_read_from_the_task_and_gets_the_bonus():
    from mbrl.envs.libero_env import prepare_libero
    prepare_libero()
    pytest.importorskip("libero.libero", reason="LIBERO not installed (bash scripts/install_sims.sh libero)")
    cfg = task_cfg("libero/libero_spatial", "task.episode_length=3", "task.image_size=64")
    env = make_env(cfg, seed=SEED)
    try:
        env.reset(seed=SEED)
        _, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
        assert (reward, terminated, info["success"]) == (0.0, False, False)
        env.unwrapped.backend.env.env._check_success = lambda: True  # the goal predicates hold
        _, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
        assert (reward, terminated, info["success"]) == (1.0 + cfg.success_bonus, False, True)  # sparse 1 + bonus
    finally:
        env.close()


@pytest.mark.libero
def test_libero_spatial_task():
    from mbrl.envs.libero_env import prepare_libero
    prepare_libero()
    pytest.importorskip("libero.libero", reason="LIBERO not installed (bash scripts/install_sims.sh libero)")
    cfg = task_cfg("libero/libero_spatial", "task.episode_length=3", "task.image_size=64")
    _generic_checks(cfg)
    env = make_env(cfg, seed=SEED)  # flip_rows turns the upright frame upside down
    flipped = make_env(OmegaConf.merge(cfg, {"flip_rows": True}), seed=SEED)
    try:
        np.testing.assert_array_equal(env.reset()[0][-3:], flipped.reset()[0][-3:, ::-1])
    finally:
        env.close()
        flipped.close()


@pytest.mark.libero
def test_libero_flip_rows_matches_robosuites_own_camera():
    """flip_rows=true gives robosuite's camera observation (LIBERO's datasets): rows flipped, not
    mirrored left to right (a 180-degree rotation mirrored the converted demos once)."""
    from mbrl.envs.libero_env import LiberoBackend, prepare_libero
    prepare_libero()
    pytest.importorskip("libero.libero", reason="LIBERO not installed (bash scripts/install_sims.sh libero)")
    from libero.libero import benchmark
    from libero.libero.envs import OffScreenRenderEnv

    size = 128
    suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    init = suite.get_task_init_states(0)[0]
    theirs = OffScreenRenderEnv(bddl_file_name=suite.get_task_bddl_file_path(0), camera_heights=size,
                                camera_widths=size)
    ours = LiberoBackend("libero_spatial", SEED, size, task_index=0, camera="agentview", flip_rows=True,
                         fast_render=False)
    try:
        theirs.seed(SEED)
        theirs.reset()
        reference = theirs.set_init_state(init)["agentview_image"].astype(float)
        ours.env.set_init_state(init)
        frame = ours.render().astype(float)

        def correlation(a: np.ndarray) -> float:
            a, b = a - a.mean(), reference - reference.mean()
            return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

        same, mirrored = correlation(frame), correlation(frame[:, ::-1])
        assert same > 0.7 and same > mirrored + 0.3, (same, mirrored)  # measured 0.83 against 0.19
    finally:
        theirs.close()
        ours.close()


@pytest.mark.libero
def test_libero_without_its_config_says_how_to_make_one(tmp_path, monkeypatch):
    """LIBERO asks for a config on stdin when imported without one (an EOFError in a batch job)."""
    import importlib.util

    from mbrl.envs import libero_env

    if importlib.util.find_spec("libero") is None:
        pytest.skip("LIBERO not installed (bash scripts/install_sims.sh libero)")
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    monkeypatch.setattr(libero_env, "CONFIG_DIR", tmp_path / "sims" / "libero")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.libero either
    with pytest.raises(MissingSimulatorError, match="no config .*install_sims.sh libero"):
        libero_env.prepare_libero()


def test_missing_simulator_messages_name_an_install_that_works():
    from mbrl.envs import MissingSimulatorError

    assert str(MissingSimulatorError("dmc")) == ("DeepMind Control (dm_control) is not installed: pip install -e "
                                                 "'.[dmc]' -c constraints.txt (or bash scripts/install_sims.sh dmc)")
    # LIBERO has no pip extra (its robomimic would bring torchvision back): only the script installs it
    assert str(MissingSimulatorError("libero")) == "LIBERO is not installed: bash scripts/install_sims.sh libero"


@pytest.mark.parametrize("task", ["coffee_push", "window_open"])
def test_metaworld_first_frame_and_state_show_this_episodes_placement(task):
    """Meta-World's reset moves bodies after its last physics step; the first frame and state must
    show where they are now (a re-render after recomputing the kinematics changes nothing), not the
    previous episode's placement."""
    import mujoco

    env = make_env(task_cfg(f"metaworld/{task}", "task.image_size=64"), seed=SEED)
    try:
        backend = env.backend
        for _ in range(2):  # the second reset moves the bodies away from the first placement
            obs, info = env.reset()
            mujoco.mj_forward(backend.env.model, backend.env.data)
            np.testing.assert_array_equal(obs[-3:], env._frame())
            np.testing.assert_array_equal(info["state"], backend.env._get_obs().astype(np.float32))
    finally:
        env.close()
