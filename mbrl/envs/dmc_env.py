"""DeepMind Control Suite tasks as DrQ-v2 runs them (pixels from one fixed camera).

Task names are DrQ-v2's ``<domain>_<task>`` (``cup`` stands for ``ball_in_cup``). The suite's own
time limit is lifted so that ``PixelEnv`` alone truncates (``episode_length`` agent steps); a real
termination (discount 0) still ends the episode. ``episode_length: null`` (cfgs/suite/dmc.yaml's
default) keeps DrQ-v2's episodes, DMC's 1000 simulator steps whatever the action repeat: see
``episode_length``. DMC has no success notion: ``success`` is always False.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable

import numpy as np

from mbrl.envs.mujoco_render import MujocoRenderer

log = logging.getLogger(__name__)

DOMAIN_ALIASES = {"cup": "ball_in_cup"}
# dm_control's time limit in simulator (control) steps: 1000 for every suite task but lqr's
# (which have none). DrQ-v2 keeps it, so its episodes last 1000 simulator steps at any repeat.
TIME_LIMIT_SIM_STEPS = 1000


def _numpy2_compat() -> None:
    """dm_control 1.0.28's quadruped calls ``np.in1d``, removed in NumPy 2.4 (``np.isin`` is the
    same for its 1-D input). Added only where missing; the newer dm_control that fixes it
    needs a mujoco that Meta-World 3.1.1 does not accept."""
    if not hasattr(np, "in1d"):
        np.in1d = lambda a, b, **kw: np.isin(np.ravel(a), b, **kw)


def _all_tasks() -> list[tuple[str, str]]:
    from dm_control import suite
    return list(suite.ALL_TASKS)


def split_name(name: str, tasks: Iterable[tuple[str, str]] | None = None) -> tuple[str, str]:
    """``<domain>_<task>`` -> (domain, task) of dm_control's suite, by the longest domain that
    prefixes the name: domains and tasks may hold underscores themselves (``point_mass_easy``,
    ``humanoid_CMU_run``, ``lqr_lqr_2_1``). ``cup`` stands for ``ball_in_cup``."""
    known = set(_all_tasks() if tasks is None else tasks)
    aliases = {**{d: d for d, _ in known}, **DOMAIN_ALIASES}
    for prefix in sorted(aliases, key=len, reverse=True):
        domain, task = aliases[prefix], name[len(prefix) + 1:]
        if name.startswith(prefix + "_") and (domain, task) in known:
            return domain, task
    raise ValueError(f"{name!r} is not a dm_control task (<domain>_<task>, e.g. walker_walk); "
                     "mbrl.envs.list_tasks('dmc') lists them")


def episode_length(requested: int | None, action_repeat: int) -> int:
    """Agent steps per episode: ``requested`` (task.episode_length) if set, else DMC's time limit
    as DrQ-v2 has it, ``TIME_LIMIT_SIM_STEPS`` over ``action_repeat`` rounded up (DrQ-v2 cuts its
    last agent step short at the limit; with a repeat that does not divide 1000 ours runs whole).
    A longer episode than DMC's is the user's choice, but not a silent one: its returns can exceed
    DMC's maximum (1000) and do not compare with published ones."""
    if action_repeat < 1:  # as PixelEnv would say, before the division below fails
        raise ValueError(f"task.action_repeat must be a positive integer, got {action_repeat!r}")
    if requested is None:
        return math.ceil(TIME_LIMIT_SIM_STEPS / action_repeat)
    if requested * action_repeat > TIME_LIMIT_SIM_STEPS:
        log.warning("task.episode_length=%d x task.action_repeat=%d = %d simulator steps: longer than DMC's "
                    "%d-step episodes, returns can exceed DMC's; task.episode_length=null keeps DMC's length",
                    requested, action_repeat, requested * action_repeat, TIME_LIMIT_SIM_STEPS)
    return requested


def task_names() -> list[str]:
    inverse = {v: k for k, v in DOMAIN_ALIASES.items()}
    return sorted(f"{inverse.get(d, d)}_{t}" for d, t in _all_tasks())


class DMCBackend:
    def __init__(self, name: str, seed: int, image_size: int, camera: int, fast_render: bool):
        from dm_control import suite

        _numpy2_compat()
        domain, task = split_name(name)
        self.env = suite.load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")})
        self.physics = self.env.physics
        spec = self.env.action_spec()
        self.action_low = spec.minimum.astype(np.float32)
        self.action_high = spec.maximum.astype(np.float32)
        self.renderer = MujocoRenderer(self.physics.model.ptr, image_size, camera, fast_render)
        self.state_dim = int(sum(np.prod(s.shape) for s in self.env.observation_spec().values()))
        self._state = np.zeros(self.state_dim, np.float32)

    def reset(self, seed: int | None) -> None:
        if seed is not None:  # the task draws initial states from its own RandomState
            self.env.task._random = np.random.RandomState(seed)
        self._set_state(self.env.reset())

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        time_step = self.env.step(action)
        self._set_state(time_step)
        terminated = time_step.last() and time_step.discount == 0.0
        return float(time_step.reward or 0.0), bool(terminated), False

    def render(self) -> np.ndarray:
        return self.renderer.render(self.physics.data.ptr)  # uint8 [H, W, 3]

    def state(self) -> np.ndarray:
        return self._state

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def _set_state(self, time_step) -> None:
        self._state = np.concatenate(
            [np.asarray(v, dtype=np.float32).ravel() for v in time_step.observation.values()])
