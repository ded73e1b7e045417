"""History buffer: the recent window plus older frames at exponentially growing spacing.

For the frame at time t, the window covers t-1 .. t-window; older frames are taken at
t - 2^j for the powers of two beyond the window (window 4: t-8, t-16, t-32, ...), the nearest
``retrieved`` of them that exist. The store is a FIFO just long enough for the farthest one
(or ``max_frames`` if that is smaller; then the spacing stops at the oldest stored frame).
"""
from __future__ import annotations

import torch

from worldmodel.memory.base import Memory


class HistoryMemory(Memory):
    def offsets(self) -> list[int]:
        """Offsets back from the next frame's time of the older frames: powers of two > window."""
        out, power = [], 1
        while len(out) < self.retrieved:
            if power > self.window:
                out.append(power)
            power *= 2
        return out

    @property
    def capacity(self) -> int:
        farthest = self.offsets()[-1] if self.retrieved else self.window
        return min(self.cfg.max_frames, farthest)

    @property
    def min_segment_length(self) -> int:
        """A full window and at least the nearest older frame (at t - offsets()[0])."""
        return self.offsets()[0] + 1 if self.retrieved else self.window + 1

    def selects_beyond_window(self, stored: int) -> bool:
        n = min(stored, self.capacity)
        positions = self.select(torch.arange(stored - n, stored)[None])  # [1, m]
        return bool((positions.diff(dim=1) != 1).any())  # a skipped frame: t-16 once 16 are stored (window 7)

    def select(self, time: torch.Tensor, key: torch.Tensor | None = None,
               query: torch.Tensor | None = None) -> torch.Tensor:
        recent = self.recent(time)
        older_count = time.shape[1] - recent.shape[1]
        if not self.retrieved or older_count == 0:
            return recent
        target = time[:, -1:] + 1  # [B, 1]
        wanted = target - torch.tensor(self.offsets()[::-1], device=time.device)  # [B, r], oldest first
        # only times that are still stored (every row of a FIFO store holds the same times)
        wanted = wanted[:, (wanted >= time[:, :1]).all(0)]
        pos = torch.searchsorted(time.contiguous(), wanted.contiguous())  # first stored at or after
        pos = pos.clamp(max=older_count - 1)  # never inside the recent window
        return torch.cat([pos, recent], dim=1)
