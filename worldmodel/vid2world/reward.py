"""Reward head: a small CNN on (frame t, action t, frame t+1) -> reward t in symlog space.

It is separate from the denoiser so it trains on real transitions at any rate and costs one
cheap forward per imagined step. Rewards are regressed in symlog space (as iVideoGPT and
DreamerV3 do) so dense shaped rewards and sparse success bonuses share one scale.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from worldmodel.interface import WorldModelConfigError

FEATURE_SIZE = 4  # spatial size the convolutions stop at


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def encoder_levels(image_size: int) -> int:
    """How many stride-2 convolutions take image_size down to FEATURE_SIZE; refuses other sizes
    (``Vid2WorldConfig`` checks this when the model is configured)."""
    if image_size < FEATURE_SIZE or FEATURE_SIZE * 2 ** int(math.log2(image_size // FEATURE_SIZE)) != image_size:
        raise WorldModelConfigError(f"Vid2World's reward head needs image_size = {FEATURE_SIZE} * 2^k "
                                    f"(e.g. 64), got {image_size}: set task.image_size to such a size.")
    return int(math.log2(image_size // FEATURE_SIZE))


class RewardHead(nn.Module):
    def __init__(self, image_size: int, action_dim: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        levels = encoder_levels(image_size)
        layers, cur = [], 6  # two RGB frames stacked
        for i in range(levels):
            out = channels * 2 ** min(i, 2)
            layers += [nn.Conv2d(cur, out, 4, stride=2, padding=1), nn.SiLU()]
            cur = out
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(cur * FEATURE_SIZE ** 2 + action_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, frame: torch.Tensor, action: torch.Tensor, next_frame: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] in [-1, 1], action [N, A] -> symlog reward [N]."""
        features = self.encoder(torch.cat([frame, next_frame], dim=1))
        return self.mlp(torch.cat([features, action.to(features.dtype)], dim=1)).squeeze(-1)
