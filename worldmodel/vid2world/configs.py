"""Configs of the Vid2World world model: the backbone's shape and everything else.

``Vid2WorldConfig`` is flat and JSON-serialisable; it is what ``get_config`` writes into
``config.json`` and what the Hydra group ``cfgs/world_model/vid2world.yaml`` fills (under
``model:``). ``size`` picks a preset for the backbone; ``backbone`` overrides single keys of it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from worldmodel.interface import WorldModelConfigError
from worldmodel.memory.base import MemoryConfig
from worldmodel.vid2world.reward import encoder_levels

TRANSFER_METHODS = ("masked", "extrapolative", "shift")
# Noise schedules both diffusers schedulers the model builds support (DDPMScheduler for training,
# DDIMScheduler for sampling); DDPM alone also has laplace and sigmoid.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Backbone keys the top-level config sets (a backbone override of them would be ignored).
TOP_LEVEL_BACKBONE_KEYS = ("image_size", "action_dim", "causal")
FRAME_CHANNELS = 3  # RGB: what Vid2World's frames, sampler and reward head hold


def _whole(value: Any) -> bool:
    """An integer setting (numpy integers too), not a bool or a float."""
    return isinstance(value, Integral) and not isinstance(value, bool)


@dataclass
class BackboneConfig:
    """Shape of the video U-Net (``backbone.VideoUNet``)."""

    image_size: int = 64
    action_dim: int = 4  # 0: action-free video model
    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64)  # per U-Net level; resolution halves per level
    blocks_per_level: int = 1
    attention_resolutions: tuple[int, ...] = (16,)  # spatial self-attention at these sizes
    head_dim: int = 16  # attention heads = channels // head_dim (spatial and temporal)
    emb_dim: int = 64  # per-frame conditioning (noise level + action) embedding width
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0
    causal: bool = True  # causal temporal attention masks and convolutions
    rope_theta: float = 10000.0  # rotary frame-position encoding in temporal attention

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        levels = len(self.channels)
        if self.image_size % (2 ** (levels - 1)):
            raise WorldModelConfigError(
                f"image_size {self.image_size} must be divisible by 2^{levels - 1} for a "
                f"{levels}-level U-Net (channels={list(self.channels)}); resize frames or "
                "use fewer levels.")
        for c in self.channels:
            if c % self.groups or c % self.head_dim:
                raise WorldModelConfigError(
                    f"every entry of channels {list(self.channels)} must be divisible by "
                    f"groups={self.groups} and head_dim={self.head_dim}.")
        if self.head_dim % 2:
            raise WorldModelConfigError(f"head_dim must be even for rotary encoding, got {self.head_dim}.")


# Backbone presets. tiny: tests and CPU (~0.9M params); base: one GPU (~34M params).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=(16, 32, 64), blocks_per_level=1, attention_resolutions=(16,),
                 head_dim=16, emb_dim=64, groups=8),
    "base": dict(channels=(64, 128, 256, 256), blocks_per_level=2, attention_resolutions=(16, 8),
                 head_dim=32, emb_dim=256, groups=32),
}


@dataclass
class Vid2WorldConfig:
    """Everything that builds a ``Vid2World`` model (see cfgs/world_model/vid2world.yaml)."""

    image_size: int = 64
    action_dim: int = 4
    size: str = "tiny"
    backbone: dict[str, Any] = field(default_factory=dict)  # overrides of the size preset
    causal: bool = True
    causal_transfer: str = "extrapolative"  # when a non-causal checkpoint is loaded as causal
    context_frames: int = 2  # real frames reset() wants
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # min-SNR-gamma weighting of the v-MSE; None (default): unweighted. min-SNR's weight
    # SNR/(SNR+1) -> 0 at high noise, where an imagined frame's layout (and the action's
    # effect) is decided; on a toy the action was ignored after 500 steps with gamma=5.
    min_snr_gamma: float | None = None
    history_mix_prob: float = 0.5  # share of training clips whose prefix sits at history noise
    # action guidance
    action_dropout: float = 0.2
    guidance_scale: float = 2.5
    # autoregressive sampling
    sampling_steps: int = 10
    history_noise_level: int = 20  # training timestep at which history frames are shown
    max_context_frames: int = 7
    # memory for long imagination (worldmodel/memory): a name (window | history | vrag) or a block
    # {name, window, retrieved, distance, key, key_size, key_dim, weights, max_frames,
    # key_conditioning}; None: a sliding window of max_context_frames
    memory: Any = None
    # reward head
    reward_channels: int = 32
    reward_hidden: int = 256
    # optimisation
    lr: float = 1e-4
    reward_lr: float = 3e-4
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0  # max gradient norm per part; 0 or None: no clipping
    gradient_checkpointing: bool = False  # recompute backbone activations in the backward pass (less memory)

    def __post_init__(self) -> None:
        # checked first: a bad size or action width would otherwise fail deep inside torch
        if not _whole(self.image_size) or self.image_size < 1:
            raise WorldModelConfigError(f"image_size must be a whole number of pixels >= 1 (e.g. 64), got "
                                        f"{self.image_size!r}: set task.image_size.")
        if not _whole(self.action_dim) or self.action_dim < 0:
            raise WorldModelConfigError(f"action_dim must be a whole number >= 0 (0: an action-free video model), "
                                        f"got {self.action_dim!r}: it is the env's action width.")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, Real)
                                           or not self.grad_clip >= 0):
            # clip_grad_norm_ with a negative max_norm flips every gradient's sign
            raise WorldModelConfigError(f"grad_clip must be a number >= 0 (0 or null: no clipping), got "
                                        f"{self.grad_clip!r}.")
        if not isinstance(self.gradient_checkpointing, bool):  # bool("false") would be True
            raise WorldModelConfigError(f"gradient_checkpointing must be true or false, got "
                                        f"{self.gradient_checkpointing!r}.")
        encoder_levels(self.image_size)  # the reward head's size rule
        if self.size not in SIZES:
            raise WorldModelConfigError(f"unknown size '{self.size}'; choose one of {sorted(SIZES)}.")
        if self.causal_transfer not in TRANSFER_METHODS:
            raise WorldModelConfigError(
                f"causal_transfer '{self.causal_transfer}' is not one of {TRANSFER_METHODS}.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise WorldModelConfigError(
                f"beta_schedule '{self.beta_schedule}' is not a diffusers noise schedule the model can train and "
                f"sample with; choose one of {list(BETA_SCHEDULES)} (squaredcos_cap_v2 is the cosine schedule).")
        if not 0 <= self.history_noise_level < self.num_train_timesteps:
            raise WorldModelConfigError(
                f"history_noise_level {self.history_noise_level} must be in [0, "
                f"num_train_timesteps={self.num_train_timesteps}).")
        if self.max_context_frames < 1 or self.context_frames < 1 or self.sampling_steps < 1:
            raise WorldModelConfigError(
                "max_context_frames, context_frames and sampling_steps must all be >= 1.")
        if not 0.0 <= self.action_dropout < 1.0:
            raise WorldModelConfigError(f"action_dropout must be in [0, 1), got {self.action_dropout}.")
        if not 0.0 <= self.history_mix_prob <= 1.0:
            raise WorldModelConfigError(f"history_mix_prob must be in [0, 1], got {self.history_mix_prob}.")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise WorldModelConfigError(f"min_snr_gamma must be > 0 (or null: unweighted), got {self.min_snr_gamma}; "
                                        "a weight <= 0 would stop or reverse learning.")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise WorldModelConfigError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got "
                                        f"{self.guidance_scale}.")
        if self.sampling_steps > self.num_train_timesteps or self.num_train_timesteps % self.sampling_steps:
            # DDIM's trailing spacing ends exactly on a clean sample only for divisors
            raise WorldModelConfigError(
                f"sampling_steps={self.sampling_steps} must divide num_train_timesteps={self.num_train_timesteps} "
                "(e.g. 4, 10, 20, 50): other counts leave the last DDIM step short of a clean frame.")
        for name in ("reward_channels", "reward_hidden"):
            if getattr(self, name) < 1:
                raise WorldModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        # JSON-normalised (tuples -> lists) so get_config() round-trips through config.json
        self.backbone = json.loads(json.dumps(dict(self.backbone or {})))
        self.backbone_config()  # validate early
        self.memory = MemoryConfig.from_any(self.memory).to_dict()  # validated, JSON-normalised

    def memory_config(self) -> MemoryConfig:
        """The memory block as a ``worldmodel.memory.MemoryConfig``."""
        return MemoryConfig.from_any(self.memory)

    def backbone_config(self) -> BackboneConfig:
        known = {f.name for f in dataclasses.fields(BackboneConfig)}
        bad = set(self.backbone) - known
        if bad:
            raise WorldModelConfigError(
                f"unknown backbone keys {sorted(bad)}; valid keys: {sorted(known - set(TOP_LEVEL_BACKBONE_KEYS))}.")
        top = sorted(set(self.backbone) & set(TOP_LEVEL_BACKBONE_KEYS))
        if top:
            raise WorldModelConfigError(
                f"backbone keys {top} are set by the top-level config, not the backbone block; set "
                f"{', '.join(f'model.{k}' for k in top)} instead (and remove them from model.backbone).")
        channels = self.backbone.get("in_channels", FRAME_CHANNELS)
        if channels != FRAME_CHANNELS:
            raise WorldModelConfigError(
                f"backbone.in_channels={channels!r}: Vid2World denoises RGB frames ({FRAME_CHANNELS} channels, as "
                f"envs render and the reward head reads them); remove model.backbone.in_channels or set it to "
                f"{FRAME_CHANNELS}.")
        kwargs = {**SIZES[self.size], **self.backbone, "image_size": self.image_size,
                  "action_dim": self.action_dim, "causal": self.causal}
        return BackboneConfig(**kwargs)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "Vid2WorldConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(config) - known
        if bad:
            raise WorldModelConfigError(
                f"unknown Vid2World config keys {sorted(bad)}; valid keys: {sorted(known)}.")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
