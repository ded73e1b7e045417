"""Keys of frames for retrieval, their weighted distance, and a predictor of state keys.

- ``pixel``: the frame itself, average-pooled to key_size x key_size, in [0, 1] (3 * key_size^2
  dims). Computable for every frame, imagined ones included, so it works inside any loop
  (MBPO gives the world model frames only). Its query for the next frame is the newest frame's
  key: retrieval finds older frames that look like the current view.
- ``state``: a pose or proprioceptive vector per frame given by the caller (e.g. the env's
  ``info["state"]`` for real frames). Inside imagination the env's state does not exist: the
  caller passes the planned key of each imagined frame, or ``LinearKeyDynamics`` predicts it
  from the previous key and the action (fitted by least squares on real segments). Its query is
  the key of the frame being generated, as in VRAG's reference (the pose of the target frame).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RIDGE = 1e-3  # regulariser of the least-squares key dynamics (keeps unseen action dims at 0)


def pixel_key(frames: torch.Tensor, key_size: int) -> torch.Tensor:
    """uint8 frames [..., 3, H, W] -> keys float [..., 3 * key_size^2] in [0, 1]."""
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:]).float() / 255.0
    return F.adaptive_avg_pool2d(x, key_size).reshape(*lead, -1)


def key_distance(keys: torch.Tensor, query: torch.Tensor, weights: torch.Tensor | None,
                 kind: str = "euclidean") -> torch.Tensor:
    """Weighted distance of keys [B, n, K] to query [B, K] -> [B, n] (smaller = more similar).
    Keys are scaled per dim by ``weights`` [K] first; cosine distance is 1 - cos."""
    if weights is not None:
        keys, query = keys * weights, query * weights
    if kind == "euclidean":
        return (keys - query[:, None]).norm(dim=-1)
    return 1.0 - F.cosine_similarity(keys, query[:, None].expand_as(keys), dim=-1, eps=1e-8)


def key_offset(context_key: torch.Tensor, target_key: torch.Tensor) -> torch.Tensor:
    """Where each context frame lies relative to the frame being generated, in key space:
    context_key [B, m, K] - target_key [B, K] -> [B, m, K] (0 for the target itself).

    The one definition of the offset a key-conditioned model is given, shared by training
    (``Vid2World.memory_diffusion_loss``) and sampling (``Vid2World.step``): a sign or operand
    swapped in one of them alone would train the model on offsets it is never sampled with."""
    return context_key - target_key[:, None]


class LinearKeyDynamics(nn.Module):
    """key_{t+1} = key_t + [a_t, 1] @ W, W fitted by ridge regression on real transitions.

    Exact for poses moved by delta actions (a camera pan, an end-effector's delta control) and a
    first-order guess otherwise. The normal equations are accumulated over every real batch seen,
    so the fit is the least-squares solution over all of them; it lives in the model's weights.
    """

    def __init__(self, action_dim: int, key_dim: int):
        super().__init__()
        self.register_buffer("xtx", torch.zeros(action_dim + 1, action_dim + 1, dtype=torch.float64))
        self.register_buffer("xty", torch.zeros(action_dim + 1, key_dim, dtype=torch.float64))
        self.register_buffer("weight", torch.zeros(action_dim + 1, key_dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, key: torch.Tensor, action: torch.Tensor) -> None:
        """Accumulate real transitions: key [B, T, K], action [B, T-1, A]."""
        x = torch.cat([action, torch.ones_like(action[..., :1])], dim=-1).flatten(0, 1).double()  # [N, A+1]
        y = (key[:, 1:] - key[:, :-1]).flatten(0, 1).double()  # [N, K]
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.count += x.shape[0]
        eye = torch.eye(self.xtx.shape[0], dtype=torch.float64, device=self.xtx.device)
        self.weight.copy_(torch.linalg.solve(self.xtx + RIDGE * eye, self.xty).float())

    def forward(self, key: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Predicted next key [B, K] from key [B, K] and action [B, A]."""
        x = torch.cat([action, torch.ones_like(action[..., :1])], dim=-1)
        return key + x.to(self.weight.dtype) @ self.weight


def pairwise_key_distance(keys: torch.Tensor, weights: torch.Tensor | None,
                          kind: str = "euclidean") -> torch.Tensor:
    """Weighted distances between all stored keys [B, n, K] -> [B, n, n]."""
    if weights is not None:
        keys = keys * weights
    if kind == "euclidean":
        return torch.cdist(keys, keys)
    unit = F.normalize(keys, dim=-1, eps=1e-8)
    return 1.0 - unit @ unit.transpose(1, 2)
