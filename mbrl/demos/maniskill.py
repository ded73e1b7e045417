"""ManiSkill 3 demonstrations: read its trajectory files, replay them in OUR env for our frames,
and collect new ones with ManiSkill's own motion-planning solutions.

Trajectory files come in pairs, as ``python -m mani_skill.utils.download_demo`` and
ManiSkill's ``RecordEpisode`` write them (schema: ManiSkill docs, "Demonstrations"):

    X.json  env_info: {env_id, env_kwargs, max_episode_steps}
            episodes: [{episode_id, episode_seed, reset_kwargs, control_mode, elapsed_steps, ...}]
    X.h5    traj_<episode_id>/actions     float32 [T, A]
            traj_<episode_id>/env_states  [T+1, ...]: a group of actors/articulations, each a
                                          dataset [T+1, D] (ManiSkill 3), or one [T+1, D] array
            traj_<episode_id>/success     bool [T] (optional), rewards [T] (optional)

Replay (``replay_episode``): reset our env with the episode's seed, then for each agent step t
set the simulator to the recorded state at control step t*k (k = action repeat) and step our
env with the recorded action there. Frames, rewards and success flags are therefore exactly
what our env gives for that state and action (our camera, size, reward mode, success bonus),
and setting the recorded state at every step keeps the replay from drifting. With k > 1 the
recorded action at t*k is held for the k control steps, as our env does.

The trajectory's control mode must be the task's (``pd_ee_delta_pose``); convert others first
with ManiSkill's tool (the message says how).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from mbrl.demos import SETTINGS_META_KEY, env_settings
from mbrl.demos.collect import NoExpertError, TooFewSuccessesError
from mbrl.envs.errors import MissingSimulatorError
from worldmodel.episodes import Episode, EpisodeRecorder, load_episode, save_episode

RGB = 3
MOTION_PLANNING_CONTROL_MODE = "pd_joint_pos"  # what ManiSkill's panda solutions drive
DEFAULT_ATTEMPTS_PER_EPISODE = 3


class ManiSkillFormatError(ValueError):
    """A trajectory file pair that does not follow ManiSkill's schema."""


class MissingMotionPlannerError(MissingSimulatorError):
    """ManiSkill is installed but its motion planner (mplib) is not, or cannot run in this venv."""

    def __init__(self, cause: BaseException | None = None, message: str | None = None):
        super().__init__("maniskill", cause, message=message or (
            "ManiSkill's motion planners need mplib, which is not installed: pip install mplib==0.1.1 "
            "(it needs numpy<2)"))


def numpy_conflict(numpy_version: str, mplib_version: str | None) -> str | None:
    """Why mplib cannot run beside this numpy, or None. mplib 0.1.x (the version mani-skill 3.0.1
    pins) is built against numpy 1 and segfaults in ``mplib.Planner`` under numpy 2, killing the
    process without a traceback; later mplib releases are not refused here. An mplib without
    version metadata is taken to be the pinned one."""
    if int(numpy_version.split(".")[0]) < 2:
        return None
    if mplib_version is not None and tuple(int(x) for x in re.findall(r"\d+", mplib_version)[:2]) >= (0, 2):
        return None
    return (f"ManiSkill's motion planner (mplib {mplib_version or '0.1'}) crashes with numpy>=2 and this venv has "
            f"numpy {numpy_version}: collect in a separate Python 3.11 venv with numpy<2 (pip install -e "
            "'.[maniskill]' torch==2.13.0 'numpy<2' 'opencv-python<4.12' --extra-index-url "
            "https://download.pytorch.org/whl/cpu; opencv-python>=4.12, which sapien and "
            "LIBERO pull in, needs numpy>=2), or convert downloaded ManiSkill trajectories: "
            "scripts/convert_demos.py format=maniskill")


def require_motion_planning() -> None:
    """Check that ManiSkill and a usable mplib are installed, or raise the error that says what to
    do. mplib is looked up, never imported or called, so a numpy it would crash under is refused
    before anything touches it."""
    from mbrl.envs.maniskill_env import prepare_vulkan

    prepare_vulkan()
    try:
        import mani_skill  # noqa: F401
    except ImportError as e:
        raise MissingSimulatorError("maniskill", e) from None
    if importlib.util.find_spec("mplib") is None:
        raise MissingMotionPlannerError()
    try:
        mplib_version: str | None = importlib.metadata.version("mplib")
    except importlib.metadata.PackageNotFoundError:
        mplib_version = None
    conflict = numpy_conflict(np.__version__, mplib_version)
    if conflict:
        raise MissingMotionPlannerError(message=conflict)


@dataclass
class Trajectory:
    episode_id: int
    seed: int
    reset_kwargs: dict
    control_mode: str
    actions: np.ndarray  # float32 [T, A]
    env_states: Any  # nested dict of arrays [T+1, D], or an array [T+1, D]
    success: np.ndarray | None  # bool [T]


def _json_path(h5_path: Path) -> Path:
    return h5_path.with_suffix(".json")


def read_env_info(h5_path: str | Path) -> tuple[dict, list[dict]]:
    """(env_info, episodes) from the json beside ``h5_path``, checked for what replay needs."""
    h5_path = Path(h5_path)
    json_path = _json_path(h5_path)
    if not json_path.is_file():
        raise ManiSkillFormatError(f"{json_path} is missing: ManiSkill trajectories come as a pair "
                                   f"{h5_path.name} + {json_path.name}; download both.")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ManiSkillFormatError(f"{json_path} is not valid JSON ({e})") from None
    env_info, episodes = meta.get("env_info"), meta.get("episodes")
    if not isinstance(env_info, dict) or "env_id" not in env_info or not isinstance(episodes, list):
        raise ManiSkillFormatError(f"{json_path} lacks env_info.env_id or the episodes list; "
                                   "is it a ManiSkill trajectory json?")
    for ep in episodes:
        for key in ("episode_id", "control_mode"):
            if key not in ep:
                raise ManiSkillFormatError(f"{json_path}: an episode has no '{key}': {ep}")
        if "episode_seed" not in ep and "seed" not in ep.get("reset_kwargs", {}):
            raise ManiSkillFormatError(f"{json_path}: episode {ep['episode_id']} has no seed "
                                       "(episode_seed or reset_kwargs.seed)")
    return env_info, episodes


def _load_group(node) -> Any:
    import h5py
    if isinstance(node, h5py.Dataset):
        return node[()]
    return {key: _load_group(node[key]) for key in node.keys()}


def _state_length(states: Any) -> int:
    if isinstance(states, dict):
        lengths = {_state_length(v) for v in states.values()}
        if len(lengths) != 1:
            raise ManiSkillFormatError(f"env_states entries have different lengths {sorted(lengths)}")
        return lengths.pop()
    return len(states)


def state_at(states: Any, t: int) -> Any:
    """The recorded state at step t, in the form ``set_state_dict`` / ``set_state`` take."""
    if isinstance(states, dict):
        return {key: state_at(value, t) for key, value in states.items()}
    return states[t]


def action_counts(h5_path: Path, episodes: list[dict]) -> list[int]:
    """The number of recorded actions of each listed episode that the file holds (the json's
    ``elapsed_steps`` is optional); what is missing or unreadable ``read_trajectories`` names."""
    import h5py

    try:
        with h5py.File(h5_path, "r") as f:
            groups = [f.get(f"traj_{ep['episode_id']}") for ep in episodes]
            return [int(g["actions"].shape[0]) for g in groups if g is not None and "actions" in g]
    except OSError:
        return []


def read_trajectories(h5_path: str | Path, max_episodes: int | None = None) -> Iterator[Trajectory]:
    """The episodes of a trajectory file pair, in the json's order, checked for consistency."""
    import h5py

    h5_path = Path(h5_path)
    _, episodes = read_env_info(h5_path)
    try:
        f = h5py.File(h5_path, "r")
    except OSError as e:
        raise ManiSkillFormatError(f"{h5_path} is not a readable hdf5 file ({e})") from None
    with f:
        for ep in episodes[:max_episodes]:
            name = f"traj_{ep['episode_id']}"
            if name not in f:
                raise ManiSkillFormatError(f"{h5_path} has no group {name} listed in its json")
            group = f[name]
            for key in ("actions", "env_states"):
                if key not in group:
                    raise ManiSkillFormatError(f"{h5_path}: {name} has no '{key}' (record the "
                                               "trajectory with env states, as RecordEpisode does)")
            actions = np.asarray(group["actions"][()], dtype=np.float32)
            states = _load_group(group["env_states"])
            try:
                num_states = _state_length(states)
            except ManiSkillFormatError as e:
                raise ManiSkillFormatError(f"{h5_path}: {name}: {e}") from None
            if actions.ndim != 2 or num_states != len(actions) + 1:
                raise ManiSkillFormatError(
                    f"{h5_path}: {name} has {len(actions)} actions of shape {actions.shape[1:]} "
                    f"and {num_states} env states (expected [T, A] and T+1)")
            reset_kwargs = dict(ep.get("reset_kwargs", {}))
            seed = episode_seed(reset_kwargs.pop("seed", ep.get("episode_seed")), f"{h5_path}: {name}")
            success = np.asarray(group["success"][()], bool) if "success" in group else None
            yield Trajectory(int(ep["episode_id"]), seed, reset_kwargs, str(ep["control_mode"]),
                             actions, states, success)


def episode_seed(value: Any, where: str) -> int:
    """A trajectory's reset seed: an int, or the one-item list RecordEpisode stores (``[s]``)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ManiSkillFormatError(f"{where}: the reset seed is {value!r}, expected an int or a one-item "
                                   "list of one (as RecordEpisode writes it); re-record the trajectory")
    return int(value)


# ----- replay in our env (needs the maniskill extra) -----
def maniskill_base_env(env) -> Any:
    """The ManiSkill ``BaseEnv`` under our ``PixelEnv`` (``make_env`` with suite maniskill)."""
    backend = getattr(env.unwrapped, "backend", None)
    sim = getattr(backend, "env", None)
    base = getattr(sim, "unwrapped", sim)
    if base is None or not hasattr(base, "set_state_dict"):
        raise TypeError("replay needs the env of a ManiSkill task (make_env with task=maniskill/...)")
    return base


def _refresh_observation(backend, base) -> None:
    """Make the backend's frame show the state just set (the backend caches the last obs)."""
    if hasattr(backend, "refresh"):
        backend.refresh()
    elif hasattr(backend, "_obs") and hasattr(base, "get_obs"):
        backend._obs = base.get_obs()


def conversion_command(h5_path: str | Path, control_mode: str) -> str:
    return (f"python -m mani_skill.trajectory.replay_trajectory --traj-path {h5_path} "
            f"-c {control_mode} -o none --save-traj")


def replay_episode(env, traj: Trajectory, action_repeat: int, max_steps: int | None = None,
                   source: str = "maniskill_trajectory") -> Episode:
    """Replay one trajectory in our env (see the module docstring) -> our ``Episode``."""
    base = maniskill_base_env(env)
    control_mode = getattr(base, "control_mode", None)
    if control_mode is not None and traj.control_mode != control_mode:
        raise ManiSkillFormatError(
            f"episode {traj.episode_id} was recorded with control mode {traj.control_mode} but the "
            f"task uses {control_mode}; convert the file first: "
            f"{conversion_command('<file>.h5', control_mode)}")

    def set_state(t: int) -> None:
        state = state_at(traj.env_states, t)
        base.set_state_dict(state) if isinstance(state, dict) else base.set_state(state)

    env.reset(seed=traj.seed)
    set_state(0)
    _refresh_observation(env.unwrapped.backend, base)
    recorder = EpisodeRecorder(np.ascontiguousarray(env.unwrapped.backend.render().transpose(2, 0, 1)))
    steps = len(traj.actions) // action_repeat
    steps = steps if max_steps is None else min(steps, max_steps)
    for t in range(steps):
        set_state(t * action_repeat)
        action = np.clip(traj.actions[t * action_repeat], -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        recorder.add(obs[-RGB:], action, reward, info["success"], terminated)
        if terminated or truncated:
            break
    return recorder.episode({"source": source, "episode_id": traj.episode_id, "seed": traj.seed,
                             "recorded_steps": len(traj.actions), "fps": _fps(base, action_repeat)})


def _fps(base, action_repeat: int) -> float | None:
    freq = getattr(base, "control_freq", None)
    return None if freq is None else float(freq) / action_repeat


def convert_maniskill(h5_path: str | Path, task_cfg: Mapping[str, Any], out_dir: str | Path,
                      success_only: bool = True, max_episodes: int | None = None,
                      source: str = "maniskill_trajectory", cap_length: bool = False) -> list[Path]:
    """Replay every episode of a trajectory file pair in our env; write ``<stem>_traj_<id>.npz``.

    Demonstrations are kept whole even when longer than the task's RL episode (ManiSkill's
    motion planner needs ~75 steps on PickCube, whose RL episode is 50); ``cap_length`` cuts
    them at ``task.episode_length`` instead."""
    from omegaconf import OmegaConf

    from mbrl.envs import make_env

    h5_path = Path(h5_path)
    env_info, episodes = read_env_info(h5_path)
    if env_info["env_id"] != task_cfg["name"]:
        raise ManiSkillFormatError(f"{h5_path} holds {env_info['env_id']} trajectories but the task "
                                   f"is {task_cfg['name']}; pick the matching task=maniskill/...")
    repeat = int(task_cfg["action_repeat"])
    settings = env_settings(task_cfg)  # the task's own, before episode_length is raised below
    cfg = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True) if OmegaConf.is_config(task_cfg)
                           else dict(task_cfg))
    if not cap_length:  # the replay env must not truncate a long demonstration
        longest = max([int(ep.get("elapsed_steps", 0)) for ep in episodes] + action_counts(h5_path, episodes) + [0])
        cfg.episode_length = max(int(cfg.episode_length), -(-longest // repeat) + 1)
    env = make_env(cfg, seed=0)
    written = []
    try:
        for traj in read_trajectories(h5_path, max_episodes):
            episode = replay_episode(env, traj, repeat, int(cfg.episode_length), source)
            if success_only and not episode.success.any():
                continue
            episode.meta.update({"task": f"maniskill/{task_cfg['name']}", "file": h5_path.name,
                                 SETTINGS_META_KEY: settings})
            written.append(save_episode(Path(out_dir) / f"{h5_path.stem}_traj_{traj.episode_id}.npz",
                                        episode))
    finally:
        env.close()
    return written


@dataclass
class MotionPlanningResult:
    paths: list[Path]
    attempts: int
    successes: int
    seconds: float
    frames: int


def solution_for(env_id: str):
    """ManiSkill's motion-planning solution for ``env_id`` (e.g. PickCube-v1 -> solvePickCube)."""
    from mani_skill.examples.motionplanning.panda import solutions

    name = "solve" + env_id.split("-v")[0]
    if not hasattr(solutions, name):
        available = sorted(n[5:] for n in dir(solutions) if n.startswith("solve"))
        raise NoExpertError(f"ManiSkill ships no motion-planning solution for {env_id}; it has: {available}. "
                            "Convert downloaded trajectories instead (scripts/convert_demos.py format=maniskill).")
    return getattr(solutions, name)


def collect_motionplanning(task_cfg: Mapping[str, Any], episodes: int, out_dir: str | Path, *,
                           seed: int = 0, max_attempts: int | None = None) -> MotionPlanningResult:
    """Collect with ManiSkill's motion planner (needs mplib), then convert into our env.

    1. run the solution in a ManiSkill env with its joint-position control, recorded by
       ManiSkill's RecordEpisode (h5 + json, env states included);
    2. convert the actions to the task's control mode with ManiSkill's replay tool;
    3. replay the converted file in our env (``convert_maniskill``), keeping successes."""
    require_motion_planning()
    import gymnasium as gym
    from mani_skill.utils.wrappers.record import RecordEpisode

    from mbrl.envs.maniskill_env import RENDER_BACKEND, SIM_BACKEND

    env_id = str(task_cfg["name"])
    solve = solution_for(env_id)
    max_attempts = max_attempts or episodes * DEFAULT_ATTEMPTS_PER_EPISODE
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mp_demos_") as tmp:
        env = gym.make(env_id, obs_mode="none", control_mode=MOTION_PLANNING_CONTROL_MODE,
                       sim_backend=SIM_BACKEND, render_backend=RENDER_BACKEND)
        env = RecordEpisode(env, output_dir=tmp, trajectory_name="motionplanning", save_video=False,
                            source_type="motionplanning",
                            source_desc="ManiSkill's official motion planning solution")
        planned = 0
        for s in range(seed, seed + max_attempts):
            result = solve(env, seed=s, debug=False, vis=False)
            ok = result != -1 and bool(np.asarray(result[-1]["success"]).any())
            planned += ok
            if planned >= episodes:
                break
        env.close()
        raw = Path(tmp) / "motionplanning.h5"
        subprocess.run([sys.executable, "-m", "mani_skill.trajectory.replay_trajectory",
                        "--traj-path", str(raw), "-c", str(task_cfg["control_mode"]), "-o", "none",
                        "--save-traj", "-b", "cpu"], check=True)
        converted = [p for p in Path(tmp).glob("motionplanning.*.h5") if p != raw]
        if not converted:
            raise RuntimeError(f"ManiSkill's replay tool wrote no converted trajectory in {tmp}")
        replayed = convert_maniskill(converted[0], task_cfg, Path(tmp) / "replayed", success_only=True,
                                     source="maniskill_motionplanning")[:episodes]
        paths = []
        for i, path in enumerate(replayed):  # same names as the other collectors
            episode = load_episode(path)
            paths.append(save_episode(Path(out_dir) / f"ep_{i:04d}_seed{episode.meta['seed']}.npz", episode))
    if len(paths) < episodes:
        raise TooFewSuccessesError(f"only {len(paths)} of {episodes} motion-planned episodes of {env_id} "
                                   f"succeeded when replayed in our env ({planned} planned successfully in "
                                   f"{s - seed + 1} attempts); raise max_attempts.")
    frames = sum(len(load_episode(p)) + 1 for p in paths)
    return MotionPlanningResult(paths, s - seed + 1, planned, time.perf_counter() - start, frames)
