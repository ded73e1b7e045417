"""DrQ's random-shift augmentation: replicate-pad by `pad` pixels, crop back at a random offset.

DrQ-v2 implements this with `grid_sample` on float images. An integer shift of a
replicate-padded image is exactly a gather with clamped indices, so we do that instead: the
result is bit-exact (no interpolation), works on uint8 (augment before the float
conversion, a quarter of the memory traffic) and needs no padded copy.
"""
from __future__ import annotations

import torch
from torch import nn


class RandomShiftsAug(nn.Module):
    def __init__(self, pad: int):
        super().__init__()
        if pad < 0:
            raise ValueError(f"aug_pad must be >= 0, got {pad}.")
        self.pad = int(pad)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                shifts: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] (any dtype) -> same shape and dtype, each image shifted by an integer
        (dy, dx) in [-pad, pad]^2 drawn per image. `shifts` [B, 2] (dy, dx) fixes them instead."""
        b, _, h, w = x.shape
        if self.pad == 0 and shifts is None:
            return x
        if shifts is None:
            gen_device = generator.device if generator is not None else x.device
            shifts = torch.randint(-self.pad, self.pad + 1, (b, 2), generator=generator,
                                   device=gen_device).to(x.device)
        # Output pixel (i, j) reads input pixel (clamp(i + dy), clamp(j + dx)); the clamp is
        # what replicate padding would have put there.
        rows = (torch.arange(h, device=x.device) + shifts[:, :1]).clamp_(0, h - 1)  # [B, H]
        cols = (torch.arange(w, device=x.device) + shifts[:, 1:]).clamp_(0, w - 1)  # [B, W]
        batch = torch.arange(b, device=x.device)[:, None, None]  # [B, 1, 1]
        # Advanced indices around a slice put the indexed dims first: [B, H, W, C].
        out = x[batch, :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()
