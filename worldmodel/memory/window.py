"""Sliding window (plain diffusion forcing): the next frame sees the ``window`` most recent frames."""
from __future__ import annotations

import torch

from worldmodel.memory.base import Memory


class WindowMemory(Memory):
    """Context = the most recent ``window`` frames; the store is a FIFO of exactly that many."""

    @property
    def capacity(self) -> int:
        return self.window

    def select(self, time: torch.Tensor, key: torch.Tensor | None = None,
               query: torch.Tensor | None = None) -> torch.Tensor:
        return self.recent(time)
