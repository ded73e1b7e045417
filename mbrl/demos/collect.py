"""Collect demonstrations in the simulator at the run's env settings, in parallel processes.

One episode per seed: ``env.reset(seed=s)``, then the scripted expert acts on ``info["state"]``
once per agent step (the env repeats the action ``action_repeat`` times), optionally with
Gaussian action noise (``noise`` = its std, actions clipped to [-1, 1]) for diverse
pretraining data. Episode seeds are ``seed, seed + 1, ...``; with ``success_only`` the first
``episodes`` successful ones are kept, in seed order, so a collection is reproducible whatever
the number of workers. Each worker process builds its env once and then collects episode after
episode (the processes are spawned, so no GL context or simulator state is ever forked).
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from mbrl.demos import SETTINGS_META_KEY, collect_command, env_settings
from worldmodel.episodes import Episode, EpisodeRecorder, save_episode

Policy = Callable[[np.ndarray], np.ndarray]  # state float32 [S] -> action float32 [A] in [-1, 1]
RGB = 3
# Attempts per wanted episode before giving up (the experts succeed far more often than 1/5).
DEFAULT_ATTEMPTS_PER_EPISODE = 5


class NoExpertError(ValueError):
    """The suite/task has no scripted expert to collect demonstrations with."""


class CollectSettingsError(ValueError):
    """A collection setting (episodes, noise, policy) that cannot work; the message says why."""


class TooFewSuccessesError(RuntimeError):
    """The attempts ran out before enough episodes succeeded; the message names the fix."""


class CollectEnvError(ValueError):
    """The env could not be built or run at the task's settings (a ValueError from the env or
    its config, e.g. task.camera=nope); the message is the env's, which names the bad key."""


def make_policy(task_cfg: Mapping[str, Any], kind: str = "expert") -> Policy | None:
    """The policy that collects: ``expert`` (the suite's scripted one) or ``random``
    (uniform actions; returns None, the collector samples them)."""
    if kind == "random":
        return None
    if kind != "expert":
        raise CollectSettingsError(f"policy must be 'expert' or 'random', got {kind!r}")
    suite = task_cfg["suite"]
    if suite == "metaworld":
        from mbrl.demos.metaworld_expert import MetaWorldExpert
        return MetaWorldExpert(str(task_cfg["name"]))
    if suite == "maniskill":
        raise NoExpertError("ManiSkill demonstrations come from its motion planners, which drive "
                            "their own env: use mbrl.demos.maniskill.collect_motionplanning "
                            "(scripts/collect_demos.py does this for task=maniskill/...).")
    corpus = "or collect policy=random success_only=false episodes for a pretraining corpus"
    if suite == "dmc":  # collect_command says there is no expert, and what to do instead
        raise NoExpertError(f"{collect_command(task_cfg)}; {corpus}.")
    raise NoExpertError(f"there is no scripted expert for the {suite} suite: convert its recorded "
                        f"demonstrations instead ({collect_command(task_cfg)}), {corpus}.")


def run_episode(env, policy: Policy | None, seed: int, noise: float = 0.0) -> Episode:
    """One episode in ``env`` (a ``make_env`` env) as an ``Episode`` of single frames."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    recorder = EpisodeRecorder(obs[-RGB:])
    action_shape = env.action_space.shape
    while True:
        if policy is None:
            action = rng.uniform(-1.0, 1.0, action_shape).astype(np.float32)
        else:
            action = np.asarray(policy(info["state"]), dtype=np.float32)
        if noise > 0:
            action = np.clip(action + rng.normal(0.0, noise, action_shape), -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        recorder.add(obs[-RGB:], action, reward, info["success"], terminated)
        if terminated or truncated:
            break
    return recorder.episode()


def control_timestep(sim: Any) -> float | None:
    """Seconds of simulated time per simulator (control) step of a backend's env: Meta-World's
    ``dt``, DMC's ``control_timestep()``, ManiSkill's / robosuite's ``1 / control_freq``; None if unknown."""
    for candidate in (sim, getattr(sim, "unwrapped", None), getattr(sim, "env", None)):  # LIBERO wraps robosuite
        if candidate is None:
            continue
        if callable(getattr(candidate, "control_timestep", None)):
            return float(candidate.control_timestep())
        if getattr(candidate, "dt", None):
            return float(candidate.dt)
        if getattr(candidate, "control_freq", None):
            return 1.0 / float(candidate.control_freq)
    return None


def env_fps(env) -> float | None:
    """Frames per second of the agent-step video: 1 / (simulator control step x action repeat)."""
    dt = control_timestep(getattr(getattr(env.unwrapped, "backend", None), "env", None))
    return None if dt is None else round(1.0 / (dt * int(env.unwrapped.action_repeat)), 3)


def env_meta(env) -> dict[str, Any]:
    """What the built env knows and the task config may leave open: its frame rate and its
    episode length (DMC's ``episode_length: null`` resolved as the env resolves it)."""
    return {"fps": env_fps(env), "episode_length": int(env.unwrapped.episode_length)}


# ----- worker processes: each builds its env once, then collects seed after seed -----
_WORKER: dict[str, Any] = {}


def _init_worker(task_cfg: dict, policy_kind: str, noise: float) -> None:
    """Only stores the settings: anything that can fail happens in ``_collect_seed``, whose
    errors are reported (a failing Pool initializer would be respawned forever)."""
    _WORKER.update(env=None, task_cfg=task_cfg, policy_kind=policy_kind, noise=noise)


def _collect_seed(seed: int) -> tuple[int, Episode | None, str, bool]:
    """(seed, episode, error message, whether the error is a ValueError: a bad task setting).
    Errors come back as text so one bad seed is reported, not a pickled traceback."""
    try:
        if _WORKER["env"] is None:
            from mbrl.envs import make_env
            _WORKER["policy"] = make_policy(_WORKER["task_cfg"], _WORKER["policy_kind"])
            _WORKER["env"] = make_env(_WORKER["task_cfg"], seed=seed)
        episode = run_episode(_WORKER["env"], _WORKER["policy"], seed, _WORKER["noise"])
        episode.meta.update(env_meta(_WORKER["env"]))
        return seed, episode, "", False
    except Exception as e:  # reported by the parent with the seed
        return seed, None, f"{type(e).__name__}: {e}", isinstance(e, ValueError)


def episode_meta(cfg: Mapping[str, Any], env_info: Mapping[str, Any], *, source: str, noise: float,
                 seed: int, success: bool) -> dict[str, Any]:
    """A collected episode's meta; ``env_info`` is ``env_meta`` of the env that played it."""
    return {"task": f"{cfg['suite']}/{cfg['name']}", "source": source, "fps": env_info.get("fps"),
            "noise": noise, "seed": seed, "success": success, "image_size": int(cfg["image_size"]),
            "action_repeat": int(cfg["action_repeat"]), "episode_length": int(env_info["episode_length"]),
            SETTINGS_META_KEY: env_settings(cfg)}


@dataclass
class CollectResult:
    paths: list[Path]
    attempts: int
    successes: int
    seconds: float
    frames: int  # agent-step frames written (sum of T+1 over the saved episodes)


def _results(task_cfg: dict, policy_kind: str, noise: float, seeds: list[int],
             workers: int) -> Iterator[tuple[int, Episode | None, str, bool]]:
    if workers <= 1:
        _init_worker(task_cfg, policy_kind, noise)
        try:
            for seed in seeds:
                yield _collect_seed(seed)
        finally:
            if _WORKER.get("env") is not None:
                _WORKER["env"].close()
            _WORKER.clear()
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(task_cfg, policy_kind, noise)) as pool:
        yield from pool.imap(_collect_seed, seeds, chunksize=1)  # in seed order
        pool.terminate()  # the caller stopped early: drop the queued seeds


def collect(task_cfg: Mapping[str, Any], episodes: int, out_dir: str | Path, *, seed: int = 0,
            noise: float = 0.0, workers: int = 1, policy: str = "expert",
            success_only: bool = True, max_attempts: int | None = None,
            progress: bool = True) -> CollectResult:
    """Collect ``episodes`` episodes into ``out_dir`` (``ep_<i>_seed<s>.npz``).

    ``success_only``: keep only episodes that reached success (at any step); stop with a
    ``RuntimeError`` after ``max_attempts`` episodes (default 5 per wanted episode)."""
    from omegaconf import DictConfig, OmegaConf

    from mbrl.envs import list_tasks

    if episodes < 1:
        raise CollectSettingsError(f"episodes must be >= 1, got {episodes}")
    if noise < 0:
        raise CollectSettingsError(f"noise is a standard deviation and must be >= 0, got {noise}")
    cfg = OmegaConf.to_container(task_cfg, resolve=True) if isinstance(task_cfg, DictConfig) else dict(task_cfg)
    make_policy(cfg, policy)  # clear errors before any process starts: no expert,
    list_tasks(cfg["suite"])  # no simulator (MissingSimulatorError)
    max_attempts = max_attempts or episodes * (DEFAULT_ATTEMPTS_PER_EPISODE if success_only else 1)
    seeds = list(range(seed, seed + max_attempts))
    out_dir = Path(out_dir)
    source = {"expert": f"{cfg['suite']}_scripted_expert", "random": "uniform_random"}[policy]

    from tqdm import tqdm
    bar = tqdm(total=episodes, desc=f"collect {cfg['suite']}/{cfg['name']}", unit="ep",
               disable=not progress)
    paths: list[Path] = []
    attempts = frames = successes = 0
    start = time.perf_counter()
    results = _results(cfg, policy, noise, seeds, workers)
    try:
        for ep_seed, episode, error, bad_setting in results:
            attempts += 1
            if episode is None:
                what = f"collecting seed {ep_seed} of {cfg['suite']}/{cfg['name']} failed: {error}"
                if bad_setting:
                    raise CollectEnvError(f"{what} (fix that task setting on the command line or in the task config)")
                raise RuntimeError(what)
            ok = bool(episode.success.any())
            successes += ok
            bar.set_postfix(attempts=attempts, success_rate=f"{successes / attempts:.2f}")
            if success_only and not ok:
                continue
            episode.meta = episode_meta(cfg, episode.meta, source=source, noise=noise, seed=ep_seed, success=ok)
            paths.append(save_episode(out_dir / f"ep_{len(paths):04d}_seed{ep_seed}.npz", episode))
            frames += len(episode) + 1
            bar.update(1)
            if len(paths) == episodes:
                break
    finally:
        results.close()
        bar.close()
    if len(paths) < episodes:
        raise TooFewSuccessesError(
            f"only {len(paths)} of {episodes} episodes succeeded in {attempts} attempts "
            f"({cfg['suite']}/{cfg['name']}, noise={noise}); lower the noise, or raise "
            f"max_attempts. Kept files are in {out_dir}.")
    return CollectResult(paths, attempts, successes, time.perf_counter() - start, frames)
