"""Meta-World v3 as iVideoGPT's MBPO runs it.

As in the official code: the goal-observable task class (39-dim state incl. the goal, what the
scripted expert policies read), a fresh random object/goal placement on every reset, the
"corner" camera with rows flipped (it is mounted upside down), no termination on success.
Differences (bugs there): placements are drawn from the env's own seeded generator instead of
the global ``np.random``, so a seed fixes the whole sequence of episodes; the first frame is
the reset state itself (the official code takes one zero-action step after reset), with the
kinematics recomputed after Meta-World's reset moves the bodies (see ``reset``).
"""
from __future__ import annotations

import numpy as np

from mbrl.envs.mujoco_render import MujocoRenderer

SUFFIX = "-goal-observable"


def task_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    return sorted(ALL_V3_ENVIRONMENTS)


class MetaWorldBackend:
    def __init__(self, name: str, seed: int, image_size: int, camera: str, flip_rows: bool,
                 fast_render: bool, max_sim_steps: int):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[name + SUFFIX](seed=seed)
        self.env._freeze_rand_vec = False  # new object/goal placement on every reset ...
        self.env.seeded_rand_vec = True  # ... drawn from env.np_random (seeded), not np.random
        # Meta-World refuses to step past max_path_length (500); our own limit truncates.
        self.env.max_path_length = max_sim_steps
        self.flip_rows = flip_rows
        self.renderer = MujocoRenderer(self.env.model, image_size, camera, fast_render)
        self.action_low = self.env.action_space.low.astype(np.float32)
        self.action_high = self.env.action_space.high.astype(np.float32)
        self._obs = np.zeros(self.env.observation_space.shape, np.float32)
        self.state_dim = self._obs.shape[0]

    def reset(self, seed: int | None) -> None:
        import mujoco

        if seed is not None:
            self.env.seed(seed)
        self.env.reset()
        # Meta-World's reset moves the task's bodies (model.body_pos) after its last physics step,
        # so data.xpos, which the camera draws and the state observation reads, still holds the
        # previous placement (27 of the 50 tasks, e.g. coffee-push, door-lock, window-open). The
        # official code hid this with a zero-action step after reset; recompute the kinematics and
        # the observation instead (its "previous position" half is the reset state, as reset sets it).
        mujoco.mj_forward(self.env.model, self.env.data)
        self.env._prev_obs = self.env._get_curr_obs_combined_no_goal().copy()
        self._obs = self.env._get_obs()

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        self._obs, reward, terminated, _, info = self.env.step(action)
        return float(reward), bool(terminated), bool(info["success"])

    def render(self) -> np.ndarray:
        frame = self.renderer.render(self.env.data)  # uint8 [H, W, 3]
        return frame[::-1] if self.flip_rows else frame

    def state(self) -> np.ndarray:
        return np.asarray(self._obs, dtype=np.float32)  # [39]

    def close(self) -> None:
        self.renderer.close()
        self.env.close()
