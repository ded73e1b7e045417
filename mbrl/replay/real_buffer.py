"""Replay of real episodes: every frame stored once, stacks and n-step returns built at sample time.

Layout. One circular array of `capacity` single frames, uint8 [capacity, 3, H, W] (optionally a
disk-backed np.memmap), and per-slot step data (action, reward, terminal, success) where the
slot of frame t of an episode holds the step taken from it. An episode of T steps takes T+1
consecutive slots (wrapping around the end); when a new episode does not fit, the oldest
episodes are evicted first. So a stored transition costs one frame plus (T+1)/T overhead and a
few bytes of step data, about 12.4 kB at 64x64 for 100-step episodes (1M transitions ~ 12.4 GB),
where a buffer of stacked (obs, next_obs) pairs would cost six frames.

Sampling (vectorised over the batch, one numpy gather per call):

* Transitions are drawn uniformly over all stored steps t in [0, T-1] of all episodes.
* Frame stacks: the stack at t is frames (t-fs+1, ..., t), oldest first; times before the
  episode start repeat its first frame (as DrQ-v2's FrameStack does at reset).
* n-step window: m = min(n, T - t) steps, so it never crosses the episode end.
  reward = sum_{i<m} gamma^i r_{t+i}; next_obs = stack at t+m; discount = gamma^m, or 0 if a
  step in the window is terminal. Design choice: DrQ-v2 only samples t <= T-n so its windows
  are always full; we also sample the last n-1 steps of an episode with the shorter window,
  which bootstraps correctly at a time-limit end (V(obs_T) with gamma^m) and at a terminal
  (discount 0), and gives every stored step the same chance of being trained on.
"""
from __future__ import annotations

import os
import tempfile
from collections import deque

import numpy as np
import torch

from mbrl.replay.batch import TransitionBatch
from worldmodel.episodes import Episode
from worldmodel.interface import SegmentBatch

FRAME_CHANNELS = 3


class RealReplayBuffer:
    def __init__(self, capacity: int, image_size: int, action_dim: int, frame_stack: int,
                 nstep: int, discount: float, memmap_dir: str | None = None):
        """capacity: single frames held (an episode of T steps uses T+1).
        memmap_dir: keep the frames in an unlinked scratch file there instead of RAM."""
        for name, value in (("capacity", capacity), ("image_size", image_size),
                            ("action_dim", action_dim), ("frame_stack", frame_stack),
                            ("nstep", nstep)):
            if int(value) < 1:
                raise ValueError(f"RealReplayBuffer: {name} must be >= 1, got {value}.")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"RealReplayBuffer: discount must be in [0, 1], got {discount}.")
        self.capacity, self.image_size = int(capacity), int(image_size)
        self.action_dim, self.frame_stack = int(action_dim), int(frame_stack)
        self.nstep, self.discount = int(nstep), float(discount)
        self.memmap_dir = memmap_dir

        frame_shape = (self.capacity, FRAME_CHANNELS, self.image_size, self.image_size)
        if memmap_dir is None:
            self._frames = np.zeros(frame_shape, dtype=np.uint8)
        else:
            self._frames = _scratch_memmap(memmap_dir, frame_shape)
        self._action = np.zeros((self.capacity, self.action_dim), dtype=np.float32)
        self._reward = np.zeros(self.capacity, dtype=np.float32)
        self._terminal = np.zeros(self.capacity, dtype=bool)
        self._success = np.zeros(self.capacity, dtype=bool)

        self._episodes: deque[tuple[int, int]] = deque()  # (first slot, steps T), oldest first
        self._write = 0  # next free slot
        self._used = 0  # slots holding frames
        self._num_transitions = 0
        self._index: tuple[np.ndarray, np.ndarray] | None = None  # (starts, lens), lazily built

    # ----- filling -----
    def add_episode(self, episode: Episode) -> None:
        """Copy a finished episode in, evicting the oldest episodes if it does not fit."""
        episode.validate(image_size=self.image_size, action_dim=self.action_dim)
        steps = len(episode)
        frames = steps + 1
        if frames > self.capacity:
            raise ValueError(f"episode of {steps} steps needs {frames} frame slots but the "
                             f"replay capacity is {self.capacity}; raise the capacity.")
        while self.capacity - self._used < frames:
            _, old_steps = self._episodes.popleft()
            self._used -= old_steps + 1
            self._num_transitions -= old_steps
        start = self._write
        self._put(self._frames, start, episode.obs)
        self._put(self._action, start, episode.action)
        self._put(self._reward, start, episode.reward)
        self._put(self._terminal, start, episode.terminal)
        self._put(self._success, start, episode.success)
        last = (start + steps) % self.capacity  # the final frame's slot has no step
        self._action[last], self._reward[last] = 0.0, 0.0
        self._terminal[last], self._success[last] = False, False
        self._episodes.append((start, steps))
        self._write = (start + frames) % self.capacity
        self._used += frames
        self._num_transitions += steps
        self._index = None

    def _put(self, array: np.ndarray, start: int, values: np.ndarray) -> None:
        """array[start : start + len(values)] = values, wrapping around the end."""
        head = min(len(values), self.capacity - start)
        array[start:start + head] = values[:head]
        array[:len(values) - head] = values[head:]

    def __len__(self) -> int:
        return self._num_transitions

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (frames included, also when memory-mapped)."""
        arrays = (self._frames, self._action, self._reward, self._terminal, self._success)
        return int(sum(a.nbytes for a in arrays))

    # ----- sampling -----
    def _episode_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            starts, lens = zip(*self._episodes) if self._episodes else ((), ())
            self._index = (np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64))
        return self._index

    def _draw(self, batch_size: int, counts: np.ndarray, generator: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
        """(episode, offset) pairs drawn uniformly over all sum(counts) positions."""
        ends = np.cumsum(counts)
        flat = generator.integers(0, ends[-1], size=batch_size)
        ep = np.searchsorted(ends, flat, side="right")
        return ep, flat - (ends[ep] - counts[ep])

    def _require(self, what: str) -> None:
        if self._num_transitions == 0:
            raise ValueError(f"cannot {what}: the replay buffer is empty; add episodes first.")

    def _stack_slots(self, starts: np.ndarray, t: np.ndarray, frames: int) -> np.ndarray:
        """Slots of frames (t-frames+1 .. t) of each episode, first frame repeated: [B, frames]."""
        times = np.maximum(t[:, None] + np.arange(1 - frames, 1), 0)
        return (starts[:, None] + times) % self.capacity

    def sample(self, batch_size: int, generator: np.random.Generator) -> TransitionBatch:
        """n-step transitions with frame stacks, as CPU tensors (see the module docstring)."""
        self._require("sample transitions")
        starts, lens = self._episode_index()
        ep, t = self._draw(batch_size, lens, generator)
        start, steps = starts[ep], lens[ep]
        window = np.minimum(self.nstep, steps - t)  # [B], >= 1
        reward = np.zeros(batch_size, dtype=np.float32)
        alive = np.ones(batch_size, dtype=bool)
        for i in range(self.nstep):
            inside = i < window
            slot = (start + np.minimum(t + i, steps - 1)) % self.capacity
            reward += np.where(inside & alive, self.discount ** i * self._reward[slot], 0.0
                               ).astype(np.float32)
            alive &= ~(inside & self._terminal[slot])
        discount = np.where(alive, self.discount ** window, 0.0).astype(np.float32)
        slots = np.stack([self._stack_slots(start, t, self.frame_stack),
                          self._stack_slots(start, t + window, self.frame_stack)], 1)
        frames = self._frames[slots]  # [B, 2, fs, 3, H, W], one gather for obs and next_obs
        frames = frames.reshape(batch_size, 2, self.frame_stack * FRAME_CHANNELS,
                                self.image_size, self.image_size)
        frames = torch.from_numpy(frames)
        action = self._action[(start + t) % self.capacity]  # [B, A]
        return TransitionBatch(obs=frames[:, 0], action=torch.from_numpy(action),
                               reward=torch.from_numpy(reward),
                               discount=torch.from_numpy(discount), next_obs=frames[:, 1])

    def sample_segments(self, batch_size: int, length: int,
                        generator: np.random.Generator) -> SegmentBatch:
        """Contiguous segments inside one episode for world-model training: obs [B, L, 3, H, W],
        action [B, L-1, A], reward [B, L-1]. Episodes with fewer than L frames are skipped."""
        self._require("sample segments")
        if length < 2:
            raise ValueError(f"segment length must be >= 2 frames, got {length}.")
        starts, lens = self._episode_index()
        counts = np.maximum(lens + 2 - length, 0)  # valid first frames per episode
        if counts.sum() == 0:
            raise ValueError(f"no stored episode has {length} frames (the longest has "
                             f"{int(lens.max()) + 1}); shorten the segment length or collect "
                             "longer episodes.")
        ep, first = self._draw(batch_size, counts, generator)
        slots = (starts[ep, None] + first[:, None] + np.arange(length)) % self.capacity  # [B, L]
        step_slots = slots[:, :-1]
        return SegmentBatch(obs=torch.from_numpy(self._frames[slots]),
                            action=torch.from_numpy(self._action[step_slots]),
                            reward=torch.from_numpy(self._reward[step_slots]))

    def sample_context(self, batch_size: int, context: int,
                       generator: np.random.Generator) -> torch.Tensor:
        """Starts for imagined rollouts: uint8 [B, context, 3, H, W] ending at a stored step t
        (a frame the agent acted from, so never an episode's final frame); frames before the
        episode start repeat its first frame."""
        self._require("sample rollout starts")
        if context < 1:
            raise ValueError(f"context must be >= 1 frame, got {context}.")
        starts, lens = self._episode_index()
        ep, t = self._draw(batch_size, lens, generator)
        return torch.from_numpy(self._frames[self._stack_slots(starts[ep], t, context)])


def _scratch_memmap(directory: str, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 memmap in a scratch file under `directory`. The file is unlinked once mapped, so
    the OS frees the disk space when the buffer goes away, even after a crash."""
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="replay_frames_", suffix=".u8", dir=directory)
    os.close(fd)
    frames = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    try:
        os.unlink(path)
    except OSError:  # e.g. Windows cannot unlink a mapped file; leave it for the user
        pass
    return frames
