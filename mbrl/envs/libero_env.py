"""LIBERO tasks (robosuite 1.4 on MuJoCo): one task of a benchmark suite, pixels from one camera.

The task is ``name`` (a suite: libero_spatial, libero_object, libero_goal, libero_10, libero_90)
plus ``task_index``. Every reset restores one of the benchmark's fixed initial states (chosen by
the seeded generator), then lets the scene settle for a few no-op steps as LIBERO evaluations do.
Frames are rendered with ``MujocoRenderer`` and come out upright. robosuite's own camera
observations, and so LIBERO's datasets, have their rows flipped (upside down, not mirrored:
LIBERO's video writer undoes it with ``image[::-1]``); ``flip_rows`` reproduces that convention.
(OpenVLA-style pipelines rotate robosuite's images by 180 degrees, which leaves them upright but
mirrored left to right: ``frame[:, ::-1]`` of ours.) Reward is robosuite's sparse task reward.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from mbrl.envs.errors import MissingSimulatorError
from mbrl.envs.mujoco_render import MujocoRenderer

SIMS_DIR = Path(os.environ.get("MBRL_SIMS_DIR", Path(__file__).resolve().parents[2] / ".sims"))
CONFIG_DIR = SIMS_DIR / "libero"  # config.yaml written by scripts/install_sims.sh libero
LIBERO_HOME_DIR = ".libero"  # LIBERO's own config folder under $HOME, where LIBERO_CONFIG_PATH is unset
SETTLE_STEPS = 10  # no-op steps after restoring an initial state (objects drop into place)
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)  # hold still, gripper open
HORIZON = 10**9  # robosuite's own limit, out of the way: PixelEnv truncates
STATE_KEYS = ("robot0_proprio-state", "object-state")


def prepare_libero() -> None:
    """Point LIBERO at the project's config. Without a config LIBERO asks questions on stdin when
    it is imported (a hang in a terminal, an EOFError in a batch job), so refuse before that."""
    if "LIBERO_CONFIG_PATH" not in os.environ and (CONFIG_DIR / "config.yaml").is_file():
        os.environ["LIBERO_CONFIG_PATH"] = str(CONFIG_DIR)
    config = Path(os.environ.get("LIBERO_CONFIG_PATH", Path.home() / LIBERO_HOME_DIR)) / "config.yaml"
    if importlib.util.find_spec("libero") is not None and not config.is_file():
        raise MissingSimulatorError("libero", message=(
            f"LIBERO is installed but has no config ({config}; it would ask for one on stdin): run bash "
            f"scripts/install_sims.sh libero, which links its scene assets and writes {CONFIG_DIR / 'config.yaml'}"))


def task_names() -> list[str]:
    from libero.libero import benchmark
    return sorted(benchmark.get_benchmark_dict())


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed the global np.random for a block, then put its state back."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


class LiberoBackend:
    def __init__(self, name: str, seed: int, image_size: int, task_index: int, camera: str,
                 flip_rows: bool, fast_render: bool):
        prepare_libero()
        from libero.libero import benchmark
        from libero.libero.envs.env_wrapper import ControlEnv

        suite = benchmark.get_benchmark_dict()[name]()
        if not 0 <= task_index < suite.n_tasks:
            raise ValueError(f"task.task_index={task_index} is out of range: {name} has tasks 0..{suite.n_tasks - 1}")
        self.language = suite.get_task(task_index).language
        self.init_states = np.asarray(suite.get_task_init_states(task_index))  # [N, state]
        # Our renderer replaces robosuite's cameras; hard_reset=False keeps one MjModel.
        # LIBERO places fixed scene bodies with the global np.random when it builds the model.
        with _global_numpy_seed(seed):
            self.env = ControlEnv(bddl_file_name=suite.get_task_bddl_file_path(task_index),
                                  use_camera_obs=False, has_offscreen_renderer=False, camera_names=[],
                                  hard_reset=False, ignore_done=True, horizon=HORIZON)
        low, high = self.env.env.action_spec
        self.action_low, self.action_high = low.astype(np.float32), high.astype(np.float32)
        self.size, self.camera, self.fast, self.flip_rows = image_size, camera, fast_render, flip_rows
        self.renderer: MujocoRenderer | None = None
        self._rng = np.random.default_rng(seed)
        self.reset(None)
        self.state_dim = self.state().shape[0]

    def reset(self, seed: int | None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        index, reset_seed = self._rng.integers(len(self.init_states)), self._rng.integers(2**31)
        with _global_numpy_seed(reset_seed):  # robosuite's reset re-places bodies with np.random
            self.env.reset()
        self._obs = self.env.set_init_state(self.init_states[index])
        self._clear_carried_state()
        for _ in range(SETTLE_STEPS):
            self._obs, *_ = self.env.step(SETTLE_ACTION)

    def _clear_carried_state(self) -> None:
        """What LIBERO's default hard reset (a rebuilt MuJoCo model) clears and ours would carry
        over from the previous episode, making a seeded reset depend on the history: the solver
        warm start, the gripper's action smoothing, the arm controller's goal."""
        self.env.sim.data._data.qacc_warmstart[:] = 0
        for robot in self.env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
            robot.controller.reset_goal()

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        self._obs, reward, _, _ = self.env.step(action)
        return float(reward), False, bool(self.env.check_success())

    def render(self) -> np.ndarray:
        model = self.env.sim.model._model
        if self.renderer is None or self.renderer.model is not model:  # robosuite may rebuild the model
            if self.renderer is not None:
                self.renderer.close()
            self.renderer = MujocoRenderer(model, self.size, self.camera, self.fast)
        frame = self.renderer.render(self.env.sim.data._data)  # uint8 [H, W, 3], upright
        return frame[::-1] if self.flip_rows else frame

    def state(self) -> np.ndarray:
        return np.concatenate([np.asarray(self._obs[k], np.float32).ravel() for k in STATE_KEYS])

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.env.close()
