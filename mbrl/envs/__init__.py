"""Environments: every suite as a gymnasium env of uint8 pixel stacks and actions in [-1, 1].

    env = make_env(cfg.task, seed=1)      # cfg.task composed from cfgs/task/<suite>/<task>.yaml
    obs, info = env.reset()               # obs uint8 [3 * frame_stack, H, W]; info: success, state
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

The task config keys are documented in cfgs/suite/<suite>.yaml. Simulators are optional extras,
imported only when their suite is asked for.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede any mujoco import

import importlib  # noqa: E402
from typing import Any, Callable, Mapping  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from mbrl.envs.errors import MissingSimulatorError, UnknownTaskError  # noqa: E402

__all__ = ["make_env", "list_tasks", "boolean", "MissingSimulatorError", "UnknownTaskError", "SUITES"]

SUITES = ("metaworld", "dmc", "maniskill", "libero")
_REQUIRED = object()


def _require(suite: str, *modules: str) -> None:
    """Import the simulator's modules, or say which extra to install."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingSimulatorError(suite, e) from e


def _check_suite(suite: Any) -> str:
    if suite not in SUITES:
        raise UnknownTaskError("suite", str(suite), SUITES)
    return suite


def list_tasks(suite: str) -> list[str]:
    """Task names that ``make_env`` accepts as ``name`` for this suite (needs its simulator)."""
    suite = _check_suite(suite)
    if suite == "metaworld":
        _require(suite, "metaworld")
        from mbrl.envs.metaworld_env import task_names
    elif suite == "dmc":
        _require(suite, "dm_control")
        from mbrl.envs.dmc_env import task_names
    elif suite == "maniskill":
        from mbrl.envs.maniskill_env import prepare_vulkan
        prepare_vulkan()
        _require(suite, "mani_skill")
        from mbrl.envs.maniskill_env import task_names
    else:
        from mbrl.envs.libero_env import prepare_libero
        prepare_libero()
        _require(suite, "libero.libero")
        from mbrl.envs.libero_env import task_names
    return task_names()


_TRUE_WORDS = ("true", "yes", "1")
_FALSE_WORDS = ("false", "no", "0")


def boolean(value: Any) -> bool:
    """Strict bool parsing: a bool, 0 / 1, or true/false/yes/no (any case). ``bool("false")``
    would be True, so a string from the command line must never go through ``bool``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
    raise ValueError(f"expected true/false (also yes/no, 1/0), got {value!r}")


class _Cfg:
    """Reads keys of a task config (dict or DictConfig) with errors that name the key."""

    def __init__(self, cfg: Mapping[str, Any]):
        if not hasattr(cfg, "get"):
            raise TypeError(f"task config must be a mapping (e.g. cfg.task), got {type(cfg).__name__}")
        self.cfg = cfg

    def __call__(self, key: str, default: Any = _REQUIRED, cast: Callable[[Any], Any] | None = None) -> Any:
        try:
            value = self.cfg.get(key, None)
        except Exception as e:  # omegaconf's MissingMandatoryValue for '???'
            raise ValueError(f"task.{key} is not set: {e}") from e
        if value is None:
            if default is _REQUIRED:
                raise ValueError(f"task config is missing the key '{key}' "
                                 f"(see cfgs/suite/<suite>.yaml for the keys)")
            return default
        if cast is not None:
            try:
                return cast(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"task.{key}={value!r} is not a valid {cast.__name__} ({e}); "
                                 f"fix task.{key} in the task config or on the command line") from e
        return value


def make_env(task_cfg: Mapping[str, Any], seed: int) -> gym.Env:
    """Build the task's env (``mbrl.envs.wrappers.PixelEnv``) seeded with ``seed``."""
    from mbrl.envs.wrappers import PixelEnv, check_positive

    get = _Cfg(task_cfg)
    suite = _check_suite(get("suite"))
    name = str(get("name"))
    seed = int(seed)
    common = dict(image_size=get("image_size", cast=int), frame_stack=get("frame_stack", cast=int),
                  action_repeat=get("action_repeat", cast=int),
                  episode_length=get("episode_length", None if suite == "dmc" else _REQUIRED, cast=int),
                  success_bonus=get("success_bonus", cast=float))
    check_positive({k: v for k, v in common.items() if v is not None})  # before a simulator is built
    # MuJoCo suites only: SAPIEN (ManiSkill) has no fast mode, so its suite config has no such key
    fast = get("fast_render", cast=boolean) if suite != "maniskill" else None
    size = common["image_size"]
    valid = list_tasks(suite)  # also checks that the simulator is installed
    if name not in valid:
        raise UnknownTaskError(f"{suite} task", name, valid)

    if suite == "metaworld":
        from mbrl.envs.metaworld_env import MetaWorldBackend
        backend = MetaWorldBackend(name, seed, size, camera=get("camera", cast=str),
                                   flip_rows=get("flip_rows", cast=boolean), fast_render=fast,
                                   max_sim_steps=common["episode_length"] * common["action_repeat"] + 1)
    elif suite == "dmc":
        from mbrl.envs.dmc_env import DMCBackend, episode_length
        common["episode_length"] = episode_length(common["episode_length"], common["action_repeat"])  # null: DMC's
        backend = DMCBackend(name, seed, size, camera=get("camera", cast=int), fast_render=fast)
    elif suite == "maniskill":
        from mbrl.envs.maniskill_env import ManiSkillBackend
        backend = ManiSkillBackend(name, seed, size, control_mode=get("control_mode", cast=str),
                                   reward_mode=get("reward_mode", cast=str),
                                   camera=get("camera", cast=str),
                                   terminate_on_success=get("terminate_on_success", cast=boolean),
                                   max_sim_steps=common["episode_length"] * common["action_repeat"])
    else:
        from mbrl.envs.libero_env import LiberoBackend
        backend = LiberoBackend(name, seed, size, task_index=get("task_index", cast=int),
                                camera=get("camera", cast=str), flip_rows=get("flip_rows", cast=boolean),
                                fast_render=fast)
    return PixelEnv(backend, task=f"{suite}/{name}", **common)
