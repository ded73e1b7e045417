"""Imagined replay buffer: k-step rollouts from the world model, sampled like real data.

Each rollout is stored as the ``frame_stack - 1`` real frames before its start, the real start
frame and the k imagined frames (uint8), with its k actions and rewards. A sample is a
transition (stacked obs, action, n-step return, discount, stacked next obs) whose n-step window
stays inside its rollout; the horizon end is a truncation, so the return bootstraps from the
last imagined frame (discount gamma^m for the m steps taken), exactly as the real buffer does
at a time limit.
"""
from __future__ import annotations

import numpy as np
import torch

from mbrl.replay import TransitionBatch
from worldmodel.interface import Rollout


class ImaginedReplayBuffer:
    def __init__(self, capacity: int, horizon: int, image_size: int, action_dim: int,
                 frame_stack: int, nstep: int, discount: float) -> None:
        self.horizon, self.frame_stack, self.nstep, self.discount = horizon, frame_stack, nstep, discount
        self.max_rollouts = max(1, capacity // horizon)
        frames_per_rollout = frame_stack - 1 + horizon + 1
        self.frames = np.zeros((self.max_rollouts, frames_per_rollout, 3, image_size, image_size), np.uint8)
        self.actions = np.zeros((self.max_rollouts, horizon, action_dim), np.float32)
        self.rewards = np.zeros((self.max_rollouts, horizon), np.float32)
        self.size = 0  # rollouts held
        self.cursor = 0  # next slot to write (oldest out first)
        self.total_added = 0  # rollouts ever added
        self.total_dropped = 0  # rollouts refused for non-finite values

    def __len__(self) -> int:
        """Transitions held."""
        return self.size * self.horizon

    def add(self, prefix: torch.Tensor, rollout: Rollout) -> int:
        """Store a batch of rollouts. ``prefix`` uint8 [B, frame_stack-1, 3, H, W] holds the real
        frames before each start (for stacking). Rollouts with non-finite actions or rewards are
        dropped, never fed to the agent. Returns how many were stored."""
        frames = torch.cat([prefix, rollout.obs], 1).cpu().numpy()  # [B, fs-1+k+1, 3, H, W]
        actions = rollout.action.float().cpu().numpy()  # [B, k, A]
        rewards = rollout.reward.float().cpu().numpy()  # [B, k]
        if frames.shape[1:] != self.frames.shape[1:] or actions.shape[1:] != self.actions.shape[1:]:
            raise ValueError(f"rollout of frames {frames.shape[1:]} / actions {actions.shape[1:]} does not fit "
                             f"the imagined buffer ({self.frames.shape[1:]} / {self.actions.shape[1:]})")
        finite = np.isfinite(actions).all((1, 2)) & np.isfinite(rewards).all(1)
        self.total_dropped += int((~finite).sum())
        for i in np.flatnonzero(finite):
            self.frames[self.cursor] = frames[i]
            self.actions[self.cursor] = actions[i]
            self.rewards[self.cursor] = rewards[i]
            self.cursor = (self.cursor + 1) % self.max_rollouts
            self.size = min(self.size + 1, self.max_rollouts)
        stored = int(finite.sum())
        self.total_added += stored
        return stored

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The rollouts held and the counters, for a checkpoint (``load_state_arrays``)."""
        n = self.size
        return {"frames": self.frames[:n], "actions": self.actions[:n], "rewards": self.rewards[:n],
                "counters": np.array([self.size, self.cursor, self.total_added, self.total_dropped], np.int64)}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore ``state_arrays``; a ValueError (nothing changed) if they do not fit this buffer."""
        size, cursor, added, dropped = (int(x) for x in arrays["counters"])
        fits = (arrays["frames"].shape == (size, *self.frames.shape[1:])
                and arrays["actions"].shape == (size, *self.actions.shape[1:])
                and arrays["rewards"].shape == (size, self.horizon) and 0 <= cursor < self.max_rollouts
                and size <= self.max_rollouts)
        if not fits:
            raise ValueError(f"{size} rollouts of frames {arrays['frames'].shape[1:]} do not fit this buffer "
                             f"({self.max_rollouts} rollouts of frames {self.frames.shape[1:]})")
        self.frames[:size], self.actions[:size], self.rewards[:size] = (arrays["frames"], arrays["actions"],
                                                                         arrays["rewards"])
        self.size, self.cursor, self.total_added, self.total_dropped = size, cursor, added, dropped

    def _stack(self, rollout: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Stacked obs at imagined step ``step`` (0 = the real start): [B, 3*fs, H, W]."""
        offsets = np.arange(self.frame_stack)  # frames step .. step+fs-1 in storage order
        frames = self.frames[rollout[:, None], step[:, None] + offsets]  # [B, fs, 3, H, W]
        return frames.reshape(len(rollout), -1, *frames.shape[-2:])

    def sample(self, batch_size: int, generator: np.random.Generator) -> TransitionBatch:
        if self.size == 0:
            raise RuntimeError("the imagined buffer is empty: generate rollouts before sampling it")
        rollout = generator.integers(0, self.size, batch_size)
        step = generator.integers(0, self.horizon, batch_size)
        steps_taken = np.minimum(self.nstep, self.horizon - step)  # the window ends at the horizon
        reward = np.zeros(batch_size, np.float32)
        discount = np.ones(batch_size, np.float32)
        for i in range(self.nstep):
            inside = i < steps_taken
            r = self.rewards[rollout, np.minimum(step + i, self.horizon - 1)]
            reward += np.where(inside, discount * r, 0.0).astype(np.float32)
            discount = np.where(inside, discount * self.discount, discount).astype(np.float32)
        return TransitionBatch(
            obs=torch.from_numpy(self._stack(rollout, step)),
            action=torch.from_numpy(self.actions[rollout, step]),
            reward=torch.from_numpy(reward),
            discount=torch.from_numpy(discount),
            next_obs=torch.from_numpy(self._stack(rollout, step + steps_taken)),
        )
