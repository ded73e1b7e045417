"""DrQ-v2's networks: a conv encoder shared by actor and critic, a deterministic actor with a
scheduled-std truncated normal, and twin Q heads. Sizes follow DrQ-v2 exactly; the encoder's
output size is computed from the frame size, so 64x64 and 84x84 (or any H >= 15) both work.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal

CONV_CHANNELS = 32
CONV_KERNEL = 3
FIRST_STRIDE = 2
NUM_STRIDE1_CONVS = 3
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
CLAMP_EPS = 1e-6  # keep sampled actions strictly inside (-1, 1), as DrQ-v2


def weight_init(m: nn.Module) -> None:
    """DrQ-v2's init: orthogonal weights (ReLU gain for convs), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.orthogonal_(m.weight, nn.init.calculate_gain("relu"))
        nn.init.zeros_(m.bias)


def conv_output_size(size: int) -> int:
    """Spatial size after the encoder: one stride-2 conv then three stride-1 convs, no padding."""
    size = (size - CONV_KERNEL) // FIRST_STRIDE + 1
    return size - NUM_STRIDE1_CONVS * (CONV_KERNEL - 1)


class Encoder(nn.Module):
    """uint8 (or float in [0, 255]) frames [B, C, H, W] -> features [B, repr_dim].
    The only place observations are scaled: obs / 255 - 0.5."""

    def __init__(self, obs_shape: tuple[int, int, int]):
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"obs_shape must be (C, H, W), got {tuple(obs_shape)}.")
        channels, height, width = obs_shape
        out_h, out_w = conv_output_size(height), conv_output_size(width)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"frames of {height}x{width} are too small for the DrQ-v2 encoder "
                             "(needs at least 15x15).")
        self.repr_dim = CONV_CHANNELS * out_h * out_w
        layers: list[nn.Module] = [nn.Conv2d(channels, CONV_CHANNELS, CONV_KERNEL, FIRST_STRIDE),
                                   nn.ReLU()]
        for _ in range(NUM_STRIDE1_CONVS):
            layers += [nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, CONV_KERNEL, 1), nn.ReLU()]
        self.convnet = nn.Sequential(*layers)
        self.apply(weight_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.float() / 255.0 - 0.5  # [B, C, H, W]
        return self.convnet(obs).flatten(1)  # [B, repr_dim]


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, out_dim))


def trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


class TruncatedNormal(Normal):
    """Normal whose samples are clipped to (-1, 1) with a straight-through gradient, and whose
    noise can itself be clipped (DrQ-v2's target-policy smoothing). log_prob / entropy are the
    untruncated Normal's, as in DrQ-v2 (they are only logged)."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__(loc, scale, validate_args=False)

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        clamped = x.clamp(ACTION_LOW + CLAMP_EPS, ACTION_HIGH - CLAMP_EPS)
        return x - x.detach() + clamped.detach()  # value clamped, gradient of identity

    def sample(self, clip: float | None = None,  # type: ignore[override]
               generator: torch.Generator | None = None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else self.loc.device
        eps = torch.randn(self.loc.shape, generator=generator, device=gen_device,
                          dtype=self.loc.dtype).to(self.loc.device)
        eps = eps * self.scale
        if clip is not None:
            eps = eps.clamp(-clip, clip)
        return self._clamp(self.loc + eps)


class Actor(nn.Module):
    """features [B, repr_dim] -> TruncatedNormal over actions [B, A] with mean tanh(mlp(.))."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, action_dim)
        self.apply(weight_init)

    def forward(self, obs: torch.Tensor, std: float) -> TruncatedNormal:
        mu = torch.tanh(self.policy(self.trunk(obs)))  # [B, A]
        return TruncatedNormal(mu, torch.full_like(mu, std))


class Critic(nn.Module):
    """(features [B, repr_dim], action [B, A]) -> (Q1 [B, 1], Q2 [B, 1])."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.apply(weight_init)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_action = torch.cat([self.trunk(obs), action], dim=-1)  # [B, feature_dim + A]
        return self.q1(h_action), self.q2(h_action)
