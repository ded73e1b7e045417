"""Replay: `TransitionBatch` (what the agent trains on) and `RealReplayBuffer` (real episodes)."""
from mbrl.replay.batch import TransitionBatch
from mbrl.replay.real_buffer import RealReplayBuffer

__all__ = ["TransitionBatch", "RealReplayBuffer"]
