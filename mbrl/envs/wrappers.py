"""The one gymnasium env every suite is seen through: pixels in, actions in [-1, 1].

A suite backend (``metaworld_env.py``, ``dmc_env.py``, ...) is a thin adapter over its simulator
(see ``Backend``). ``PixelEnv`` adds what all suites share, as in DrQ-v2 and iVideoGPT:

* actions in [-1, 1]^A, rescaled to the simulator's bounds;
* action repeat: rewards summed over ``action_repeat`` simulator steps (stopping early if the
  simulator terminates); the agent step counts as a success if any of its simulator steps did,
  and then gets ``success_bonus`` added once (iVideoGPT's Meta-World rule);
* a step limit of ``episode_length`` agent steps (``truncated=True`` on the last one);
* observations uint8 [3 * frame_stack, H, W], oldest frame first (newest is ``obs[-3:]``);
  after ``reset`` the first frame fills the whole stack.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Protocol

import gymnasium as gym
import numpy as np

RGB = 3  # channels per frame


class Backend(Protocol):
    """What a suite adapter provides. Frames are uint8 [H, W, 3], upright."""

    action_low: np.ndarray  # float32 [A], the simulator's bounds
    action_high: np.ndarray  # float32 [A]
    state_dim: int

    def reset(self, seed: int | None) -> None: ...

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        """One simulator step -> (reward, terminated, success)."""

    def render(self) -> np.ndarray: ...

    def state(self) -> np.ndarray:
        """float32 [state_dim]: low-dim state / proprioception of the current step."""

    def close(self) -> None: ...


POSITIVE_KEYS = ("image_size", "frame_stack", "action_repeat", "episode_length")


def check_positive(values: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the task key of any of ``POSITIVE_KEYS`` in ``values`` below 1
    (checked before a simulator is built: a 0-pixel frame fails deep inside the renderer)."""
    for key in POSITIVE_KEYS:
        if key in values and int(values[key]) < 1:
            raise ValueError(f"task.{key} must be a positive integer, got {values[key]!r}")


class PixelEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, backend: Backend, *, image_size: int, frame_stack: int, action_repeat: int,
                 episode_length: int, success_bonus: float, task: str):
        check_positive(dict(image_size=image_size, frame_stack=frame_stack, action_repeat=action_repeat,
                            episode_length=episode_length))
        self.backend, self.task = backend, task
        self.frame_stack, self.action_repeat = int(frame_stack), int(action_repeat)
        self.episode_length, self.success_bonus = int(episode_length), float(success_bonus)
        self.render_mode = "rgb_array"
        self._low = np.asarray(backend.action_low, dtype=np.float64)
        self._high = np.asarray(backend.action_high, dtype=np.float64)
        self.observation_space = gym.spaces.Box(
            0, 255, (RGB * self.frame_stack, int(image_size), int(image_size)), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, self._low.shape, np.float32)
        self._frames: deque[np.ndarray] = deque(maxlen=self.frame_stack)  # each uint8 [3, H, W]
        self._steps: int | None = None  # agent steps since reset; None before the first reset

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.backend.reset(seed)
        frame = self._frame()
        self._frames.extend([frame] * self.frame_stack)
        self._steps = 0
        return self._observation(), self._info(False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._steps is None:
            raise RuntimeError(f"{self.task}: call reset() before step() (and after an episode ends)")
        sim_action = self._sim_action(action)
        reward, terminated, success = 0.0, False, False
        for _ in range(self.action_repeat):
            r, terminated, s = self.backend.step(sim_action)
            reward += float(r)
            success = success or bool(s)
            if terminated:
                break
        if success:
            reward += self.success_bonus
        self._steps += 1
        truncated = self._steps >= self.episode_length and not terminated
        if terminated or truncated:
            self._steps = None
        self._frames.append(self._frame())
        return self._observation(), reward, terminated, truncated, self._info(success)

    def render(self) -> np.ndarray:
        """The newest frame, uint8 [H, W, 3] (for videos)."""
        if not self._frames:
            raise RuntimeError(f"{self.task}: call reset() before render()")
        return self._frames[-1].transpose(1, 2, 0)

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------ helpers
    def _sim_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.task}: action must have shape {self.action_space.shape}, "
                             f"got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: action has NaN or inf entries: {action}")
        action = np.clip(action, -1.0, 1.0)
        return (self._low + (action + 1.0) * 0.5 * (self._high - self._low)).astype(np.float32)

    def _frame(self) -> np.ndarray:
        frame = self.backend.render()  # uint8 [H, W, 3]
        return np.ascontiguousarray(frame.transpose(2, 0, 1))  # [3, H, W]

    def _observation(self) -> np.ndarray:
        return np.concatenate(self._frames, axis=0)  # uint8 [3 * frame_stack, H, W]

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": bool(success), "state": np.asarray(self.backend.state(), dtype=np.float32)}
