"""The batch of n-step transitions the agent trains on, from the real or the imagined buffer."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TransitionBatch:
    obs: torch.Tensor  # uint8 [B, 3*fs, H, W] frame stack at time t (oldest frame first)
    action: torch.Tensor  # float32 [B, A] action taken at t
    reward: torch.Tensor  # float32 [B] sum_{i<n} gamma^i r_{t+i}
    discount: torch.Tensor  # float32 [B] gamma^n, 0 if the window ends in a terminal step
    next_obs: torch.Tensor  # uint8 [B, 3*fs, H, W] frame stack at t+n

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str) -> "TransitionBatch":
        return TransitionBatch(*(getattr(self, f.name).to(device, non_blocking=True)
                                 for f in fields(self)))

    def pin_memory(self) -> "TransitionBatch":
        return TransitionBatch(*(getattr(self, f.name).pin_memory() for f in fields(self)))

    @staticmethod
    def cat(batches: list["TransitionBatch"]) -> "TransitionBatch":
        """Concatenate along the batch dim (e.g. real and imagined halves of an MBPO batch)."""
        return TransitionBatch(*(torch.cat([getattr(b, f.name) for b in batches])
                                 for f in fields(TransitionBatch)))
