"""Vid2World: a causal, action-conditioned video diffusion model used as an MBPO world model.

Training (``update``), on real segments obs [B, T, 3, H, W], action [B, T-1, A]:
- diffusion forcing: every frame gets its own noise level; the denoiser predicts v
  (``DDPMScheduler.get_velocity``), loss MSE on v, optionally min-SNR weighted. With
  probability ``history_mix_prob`` a clip's random-length prefix is put at a noise level
  <= ``history_noise_level``, the setting the sampler uses for history frames.
- actions: frame t is conditioned on a_{t-1}; frame 0 (and frames whose action is dropped,
  p = ``action_dropout``) get a learned null action, which gives classifier-free guidance.
- the reward head (``reward.py``) regresses symlog rewards of real transitions.

Imagination (``reset``/``step``), following ``interface.py``'s alignment: step(state, a_t) ->
(o_{t+1}, r_t, state). Per step: ``select_context`` asks the memory (``worldmodel/memory``;
``config.memory``: a sliding window of ``max_context_frames`` by default, or a history buffer, or
VRAG retrieval by key) which stored frames condition the next one; they are noised to
``history_noise_level`` and encoded once; the new frame is denoised from pure noise with DDIM
(``sampling_steps``), guided on its action with ``guidance_scale``. Cached within a step: the
causal backbone's history features of every temporal layer (``backbone.TemporalCache``; exact
because history never sees the new frame), shared by all denoising steps and both guidance
branches, and the noise-level embeddings of all DDIM steps and the action embedding. History
features are not carried across steps: the context window (or a retrieval memory) may change
which frames are in it, and features of a frame depend on the frames before it in the window.

Memory: the state stores at most the memory's capacity of frames (its policy drops the rest),
each with its absolute time and, for VRAG, a key. A context frame that does not directly follow
the frame before it in the context gets the null action, in training and sampling alike. With a
history or VRAG memory, training builds each segment's clip as sampling would: the context that
memory selects for the segment's last frame from the frames before it, then that frame
(``diffusion_objective``, shared by ``update`` and pretraining's diffusion stage).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any
import warnings

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from worldmodel.interface import SegmentBatch, WorldModel, WorldModelConfigError, check_step_action, read_config
from worldmodel.memory import KeyedSegmentBatch, LinearKeyDynamics, build_memory, gaps, key_offset, pixel_key
from worldmodel.vid2world.backbone import TemporalCache, VideoUNet
from worldmodel.vid2world.configs import FRAME_CHANNELS, Vid2WorldConfig
from worldmodel.vid2world.reward import RewardHead, symexp, symlog

PIXEL_SCALE = 127.5  # uint8 [0, 255] <-> float [-1, 1]


def to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.to(torch.float32) / PIXEL_SCALE - 1.0


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return ((frames.float().clamp(-1, 1) + 1.0) * PIXEL_SCALE).round().to(torch.uint8)


@dataclass
class ImaginationState:
    """The frames the memory keeps (at most its capacity); ``step`` returns a new state and
    leaves this one intact."""

    frames: torch.Tensor  # uint8 [B, n, 3, H, W]: stored context and imagined frames, time-sorted
    prev_action: torch.Tensor  # float32 [B, n, A]: the action that led into each frame
    action_known: torch.Tensor  # bool [B, n]: False for real context frames (action unknown)
    generator: torch.Generator | None
    time: torch.Tensor | None = None  # long [B, n]: each stored frame's step (first context frame = 0)
    key: torch.Tensor | None = None  # float [B, n, K]: retrieval keys (VRAG memory only)

    def take(self, pos: torch.Tensor) -> "ImaginationState":
        """The state restricted to stored positions pos [B, c]."""
        rows = torch.arange(pos.shape[0], device=pos.device)[:, None]
        return ImaginationState(self.frames[rows, pos], self.prev_action[rows, pos], self.action_known[rows, pos],
                                self.generator, self.time[rows, pos],
                                None if self.key is None else self.key[rows, pos])

    def nbytes(self) -> int:
        """Bytes held by the stored frames, actions and keys."""
        parts = (self.frames, self.prev_action, self.action_known, self.time, self.key)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


@dataclass
class HistoryContext:
    """The encoded history for one imagined step."""

    frames: torch.Tensor  # float [B, m, 3, H, W], noised to history_noise_level
    emb: torch.Tensor  # [B, m, E] per-frame conditioning
    cache: TemporalCache | None  # recorded temporal features (causal backbone only)


class Vid2World(WorldModel):
    model_type = "vid2world"
    parts = ("diffusion", "reward")
    # A checkpoint keeps its backbone, noise schedule and history noise level; a run sets these
    # (``causal`` on a non-causal checkpoint causalises it on load, see from_pretrained).
    run_settings = ("causal", "causal_transfer", "min_snr_gamma", "history_mix_prob", "action_dropout",
                    "guidance_scale", "sampling_steps", "max_context_frames", "memory", "lr", "reward_lr",
                    "weight_decay", "grad_clip", "gradient_checkpointing")
    # The state-key modules exist only with a VRAG memory on state keys (``memory`` is a run
    # setting): a checkpoint without them loads with them fresh (zero key embedding, unfitted key
    # dynamics); one with them loads into a run without such a memory without them.
    optional_weights = ("key_embedding.", "key_dynamics.")
    value_states = True  # ``step`` builds a new ImaginationState

    def __init__(self, config: Vid2WorldConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = config if config is not None else Vid2WorldConfig.from_dict(kwargs)
        cfg = self.config
        self.image_size, self.action_dim, self.context_frames = cfg.image_size, cfg.action_dim, cfg.context_frames
        self.backbone = VideoUNet(cfg.backbone_config())
        self.backbone.gradient_checkpointing = bool(cfg.gradient_checkpointing)
        self.reward_head = RewardHead(cfg.image_size, cfg.action_dim, cfg.reward_channels, cfg.reward_hidden)
        self.memory = build_memory(cfg.memory, cfg.max_context_frames)
        self._idle_memory_warned: set[int] = set()  # horizons check_horizon has warned about
        mem = self.memory.cfg
        self.state_keys = self.memory.needs_keys and mem.key == "state"
        self.key_dynamics = LinearKeyDynamics(cfg.action_dim, mem.key_dim) if self.state_keys else None
        # Each context frame's key offset from the frame being generated, embedded into its
        # conditioning (zero-init, bias-free: offset 0 of the new frame adds nothing).
        self.key_embedding = None
        if self.state_keys and mem.key_conditioning:
            self.key_embedding = torch.nn.Linear(mem.key_dim, self.backbone.cfg.emb_dim, bias=False)
            torch.nn.init.zeros_(self.key_embedding.weight)
        # What the diffusion part trains: the backbone and the memory's key embedding (if any). Both
        # ``update`` and the pretraining stage (``training/stages.py``) optimise exactly these.
        self.diffusion_modules: tuple[str, ...] = ("backbone",) + (
            ("key_embedding",) if self.key_embedding is not None else ())
        diffusion_params = [p for name in self.diffusion_modules for p in getattr(self, name).parameters()]
        self.diffusion_params = diffusion_params
        schedule = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                        prediction_type="v_prediction")
        self.noise_scheduler = DDPMScheduler(**schedule, clip_sample=False)
        self.sampler = DDIMScheduler(**schedule, clip_sample=True, set_alpha_to_one=True,
                                     timestep_spacing="trailing")  # trailing: few steps start at pure noise
        self.optimizers = {
            "diffusion": torch.optim.AdamW(diffusion_params, lr=cfg.lr, weight_decay=cfg.weight_decay),
            "reward": torch.optim.AdamW(self.reward_head.parameters(), lr=cfg.reward_lr,
                                        weight_decay=cfg.weight_decay),
        }
        self.schedulers = {}
        # Reuse history features across denoising steps (causal backbone only); False recomputes
        # the whole window at every step (same result, slower; kept for benchmarks and checks).
        self.use_cache = True
        self.counters = {f"{c}_{p}": 0 for p in self.parts for c in ("updates", "skipped")}

    @property
    def device(self) -> torch.device:
        return self.backbone.conv_in.weight.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----- persistence -----
    def get_config(self) -> dict:
        return self.config.to_dict()

    @classmethod
    def from_config(cls, config: dict) -> "Vid2World":
        return cls(Vid2WorldConfig.from_dict(dict(config)))

    @classmethod
    def from_pretrained(cls, directory, **overrides: Any) -> "Vid2World":
        """As ``WorldModel.from_pretrained``; a non-causal checkpoint loaded with ``causal=True``
        is causalised with ``causal_transfer`` (override or the checkpoint's own). A causal
        checkpoint keeps the ``causal_transfer`` it records (how its kernels were made)."""
        config = read_config(directory)
        if config.get("causal", True) and overrides.get("causal", True) is False:
            raise WorldModelConfigError(
                f"{directory} holds a causal model (its temporal kernels were transferred from a non-causal "
                "one) and cannot be run non-causally; set causal: true, or load the non-causal checkpoint.")
        if config.get("causal", True):
            overrides = {k: v for k, v in overrides.items() if k != "causal_transfer"}
        if not config.get("causal", True) and overrides.get("causal", False):
            from worldmodel.vid2world.causalize import causalize

            method = overrides.get("causal_transfer", config.get("causal_transfer", "extrapolative"))
            rest = {k: v for k, v in overrides.items() if k not in ("causal", "causal_transfer")}
            return causalize(super().from_pretrained(directory, **rest), method)
        return super().from_pretrained(directory, **overrides)

    # ----- what a run may ask of the model -----
    def check_segment_length(self, length: int) -> None:
        """Segments must hold the context the memory samples with (``Memory.min_segment_length``):
        a shorter one would train on contexts unlike the ones imagination builds."""
        super().check_segment_length(length)
        need, mem = self.memory.min_segment_length, self.memory
        if length < need:
            raise WorldModelConfigError(
                f"segments of {length} frames are too short for the {mem.cfg.name} memory (window {mem.window}, "
                f"retrieved {mem.retrieved}): its training clips need at least {need} frames to hold the "
                f"context it imagines with; set world_model.segment_length >= {need}.")

    def check_horizon(self, horizon: int) -> None:
        """Also warn (once per horizon) when rollouts of ``horizon`` steps never store enough frames
        for a history or VRAG memory to choose anything: it then acts as a sliding window at the
        cost of its longer training segments (MBPO's defaults: 2 context + 10 imagined frames)."""
        super().check_horizon(horizon)
        mem, stored = self.memory, self.context_frames + horizon - 1  # frames before the last step
        if mem.cfg.name == "window" or mem.selects_beyond_window(stored) or horizon in self._idle_memory_warned:
            return
        self._idle_memory_warned.add(horizon)
        needed = next((h for h in range(horizon + 1, horizon + mem.capacity + mem.context_size + 2)
                       if mem.selects_beyond_window(self.context_frames + h - 1)), None)
        when = (f"it chooses from a horizon of {needed} steps on" if needed else
                f"with memory.max_frames={mem.capacity} it never chooses")
        warnings.warn(f"the {mem.cfg.name} memory (window {mem.window}, retrieved {mem.retrieved}) acts as a sliding "
                      f"window in rollouts of {horizon} steps from {self.context_frames} context frames ({stored} "
                      f"frames stored before the last step): {when}. cfgs/memory/{mem.cfg.name}.yaml says when it "
                      "pays off.", RuntimeWarning, stacklevel=2)

    @property
    def needs_frame_keys(self) -> bool:
        return self.state_keys

    # ----- input checks -----
    def _check_frames(self, obs: torch.Tensor, what: str, dims: int) -> None:
        if not isinstance(obs, torch.Tensor):
            raise WorldModelConfigError(f"{what} must be a torch uint8 tensor of frames, got {type(obs).__name__}; "
                                        "convert with torch.from_numpy.")
        shape = tuple(obs.shape)
        if obs.dtype != torch.uint8:
            raise WorldModelConfigError(f"{what} must be uint8 frames in [0, 255], got {obs.dtype}.")
        if obs.dim() != dims or shape[-3] != FRAME_CHANNELS or shape[-2:] != (self.image_size, self.image_size):
            want = "[B, T, 3, H, W]" if dims == 5 else "[B, 3, H, W]"
            raise WorldModelConfigError(
                f"{what} has shape {shape}; expected {want} with H = W = {self.image_size} (the "
                "model's image_size): render the env at that size or rebuild the model.")
        if shape[0] == 0:  # else the backbone's reshapes fail at the first step
            raise WorldModelConfigError(f"{what} holds no rollouts (batch size B = 0); pass at least one.")

    def _with_action(self, batch: SegmentBatch) -> SegmentBatch:
        """The batch with ``action=None`` (action-free data, ``interface.SegmentBatch``) made an
        empty [B, T-1, 0] action for an action-free model (action_dim 0); refused otherwise."""
        if batch.action is not None:
            return batch
        if self.action_dim != 0:
            raise WorldModelConfigError(
                f"batch.action is None, but this model is conditioned on {self.action_dim}-D actions: pass "
                "action [B, T-1, A], or build an action-free model (action_dim: 0).")
        B, T = batch.obs.shape[:2]
        return dataclasses.replace(batch, action=torch.zeros(B, max(T - 1, 0), 0, device=batch.obs.device))

    def _check_batch(self, batch: SegmentBatch) -> None:
        self._check_frames(batch.obs, "batch.obs", 5)
        B, T = batch.obs.shape[:2]
        if T < 2:
            raise WorldModelConfigError(f"segments need at least 2 frames, got T = {T}.")
        if batch.action is None:
            self._with_action(batch)  # refused unless action-free
        elif not isinstance(batch.action, torch.Tensor):
            raise WorldModelConfigError(f"batch.action must be a float tensor [B, T-1, A], got "
                                        f"{type(batch.action).__name__}.")
        elif tuple(batch.action.shape) != (B, T - 1, self.action_dim):
            raise WorldModelConfigError(
                f"batch.action has shape {tuple(batch.action.shape)}; expected [B, T-1, A] = "
                f"{(B, T - 1, self.action_dim)} (action[t] leads from obs[t] to obs[t+1]).")
        if not isinstance(batch.reward, torch.Tensor):
            raise WorldModelConfigError(
                f"batch.reward must be a float tensor [B, T-1] = {(B, T - 1)}, got {type(batch.reward).__name__} "
                "(every segment needs its rewards; convert with torch.as_tensor).")
        if tuple(batch.reward.shape) != (B, T - 1):
            raise WorldModelConfigError(
                f"batch.reward has shape {tuple(batch.reward.shape)}; expected [B, T-1] = {(B, T - 1)}.")

    def _check_parts(self, parts: tuple[str, ...] | None) -> tuple[str, ...]:
        parts = self.parts if parts is None else tuple(parts)
        bad = set(parts) - set(self.parts)
        if bad:
            raise WorldModelConfigError(f"unknown parts {sorted(bad)}; Vid2World trains {self.parts}.")
        return parts

    # ----- training -----
    def diffusion_loss(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion-forcing v-prediction loss. obs float [B, T, 3, H, W] in [-1, 1], action [B, T-1, A]."""
        B = obs.shape[0]
        prev_action = torch.cat([action.new_zeros(B, 1, self.action_dim), action], dim=1)  # [B, T, A]
        no_action = torch.zeros(obs.shape[:2], dtype=torch.bool, device=obs.device)
        no_action[:, 0] = True  # frame 0 has no previous action
        return self.clip_diffusion_loss(obs, prev_action, no_action)

    def memory_diffusion_loss(self, obs: torch.Tensor, action: torch.Tensor,
                              key: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on clips built as the memory builds contexts: for each segment, the frames
        the memory selects for its last frame (retrieved from the earlier part of the same
        segment, for VRAG), then that frame. obs [B, T, ...], action [B, T-1, A], key [B, T, K]."""
        B, T = obs.shape[:2]
        idx = self.memory.training_clip(B, T, key, obs.device)  # [B, m+1]
        rows = torch.arange(B, device=obs.device)[:, None]
        prev_action = torch.cat([action.new_zeros(B, 1, self.action_dim), action], dim=1)[rows, idx]
        no_action = gaps(idx) | (idx == 0)
        offset = None
        if self.key_embedding is not None:
            offset = key_offset(key[rows, idx], key[:, -1])  # [B, m+1, K]; 0 for the target frame
        return self.clip_diffusion_loss(obs[rows, idx], prev_action, no_action, offset)

    def key_offset_embedding(self, key_offset: torch.Tensor | None) -> torch.Tensor | float:
        """Conditioning [..., E] from key offsets [..., K] (0 without key conditioning)."""
        if self.key_embedding is None or key_offset is None:
            return 0.0
        weights = self.memory.weights(key_offset)
        return self.key_embedding(key_offset if weights is None else key_offset * weights)

    def clip_diffusion_loss(self, obs: torch.Tensor, prev_action: torch.Tensor, no_action: torch.Tensor,
                            key_offset: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion forcing on a clip obs [B, T, 3, H, W] whose frames are conditioned on
        prev_action [B, T, A] except where no_action [B, T] (plus random action dropout)."""
        cfg, device = self.config, obs.device
        B, T = obs.shape[:2]
        t = torch.randint(0, cfg.num_train_timesteps, (B, T), device=device)  # independent per frame
        mixed = torch.rand(B, device=device) < cfg.history_mix_prob
        split = torch.randint(1, T, (B,), device=device)
        prefix = mixed[:, None] & (torch.arange(T, device=device)[None] < split[:, None])  # [B, T]
        t = torch.where(prefix, torch.randint_like(t, 0, cfg.history_noise_level + 1), t)
        noise = torch.randn_like(obs)
        x0, eps, tf = obs.flatten(0, 1), noise.flatten(0, 1), t.flatten()
        noisy = self.noise_scheduler.add_noise(x0, eps, tf).view_as(obs)
        target = self.noise_scheduler.get_velocity(x0, eps, tf).view_as(obs)

        drop = no_action | (torch.rand(B, T, device=device) < cfg.action_dropout)
        with self._autocast():
            emb = self.backbone.embed(t, prev_action, drop) + self.key_offset_embedding(key_offset)
            pred = self.backbone(noisy, emb)
        mse = (pred.float() - target).pow(2).mean(dim=(2, 3, 4))  # [B, T]
        if cfg.min_snr_gamma is not None:
            alpha_bar = self.noise_scheduler.alphas_cumprod.to(device)[t]
            snr = alpha_bar / (1 - alpha_bar)
            weight = snr.clamp(max=cfg.min_snr_gamma) / (snr + 1)  # min-SNR for v-prediction
            loss = (weight * mse).mean()
        else:
            loss = mse.mean()
        return loss, {"diffusion/loss": loss.item(), "diffusion/mse_v": mse.mean().item()}

    def reward_loss(self, obs: torch.Tensor, action: torch.Tensor,
                    reward: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE in symlog space on every transition (obs[t], action[t], obs[t+1]) -> reward[t]."""
        # fp32, as in imagination (the head is small; bf16 would round its symlog output)
        pred = self.reward_head(obs[:, :-1].flatten(0, 1), action.flatten(0, 1), obs[:, 1:].flatten(0, 1))
        loss = (pred - symlog(reward.flatten())).pow(2).mean()
        return loss, {"reward/loss": loss.item()}

    def _optimize(self, part: str, loss: torch.Tensor, module: torch.nn.Module) -> dict[str, float]:
        params = self.diffusion_params if part == "diffusion" else module.parameters()
        return self.optimizer_step(part, loss, params, self.config.grad_clip)

    def _segment_keys(self, batch: SegmentBatch) -> torch.Tensor | None:
        """Keys [B, T, K] of a segment's frames for the memory (None if it needs none); state
        keys also refine the key dynamics used to predict imagined frames' keys."""
        if not self.memory.needs_keys:
            return None
        mem = self.memory.cfg
        if mem.key == "pixel":
            return pixel_key(batch.obs, mem.key_size)
        if not isinstance(batch, KeyedSegmentBatch) or batch.key is None:
            raise WorldModelConfigError(
                "memory.key=state trains on segments with a key per frame (worldmodel.memory."
                "KeyedSegmentBatch with key [B, T, K]); pass them, or use memory.key=pixel.")
        key = self._state_keys(batch.key, (*batch.obs.shape[:2], mem.key_dim), "batch.key", "[B, T, K]")
        self.key_dynamics.observe(key, batch.action.float())
        return key

    def diffusion_objective(self, batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The diffusion loss of real segments (uint8 obs, on the model's device), the one place
        that decides what a segment trains, for ``update`` and pretraining (``DiffusionStage``)
        alike: with the window memory, diffusion forcing on every frame of the segment; with a
        history or VRAG memory, the clip that memory builds for the segment's last frame, as
        sampling would (retrieved frames, gaps and null actions included; a segment too short for
        such a clip is refused)."""
        batch = self._with_action(batch)
        obs, action = to_float(batch.obs), batch.action.float()
        if self.memory.cfg.name == "window":
            return self.diffusion_loss(obs, action)
        self.check_segment_length(obs.shape[1])
        return self.memory_diffusion_loss(obs, action, self._segment_keys(batch))

    def update(self, batch: SegmentBatch, parts: tuple[str, ...] | None = None) -> dict[str, float]:
        parts = self._check_parts(parts)
        self._check_batch(batch)
        batch = self._with_action(batch)
        batch = batch.to(self.device)
        self.train()
        metrics: dict[str, float] = {}
        if "diffusion" in parts:
            loss, m = self.diffusion_objective(batch)
            metrics.update(m)
            metrics.update(self._optimize("diffusion", loss, self.backbone))
        if "reward" in parts:
            loss, m = self.reward_loss(to_float(batch.obs), batch.action.float(), batch.reward.float())
            metrics.update(m)
            metrics.update(self._optimize("reward", loss, self.reward_head))
        return metrics

    # ----- sampling -----
    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=device).to(self.device)

    def encode_history(self, frames: torch.Tensor, prev_action: torch.Tensor, drop: torch.Tensor,
                       generator: torch.Generator | None = None,
                       key_offset: torch.Tensor | None = None) -> HistoryContext:
        """History frames float [B, m, 3, H, W] -> noised to history_noise_level, embedded, and
        (causal backbone) run once through the denoiser to record its temporal cache."""
        level = self.config.history_noise_level
        t = torch.full(frames.shape[:2], level, device=self.device, dtype=torch.long)
        if level > 0:
            noise = self._randn(tuple(frames.shape), generator)
            frames = self.noise_scheduler.add_noise(frames.flatten(0, 1), noise.flatten(0, 1),
                                                    t.flatten()).view_as(frames)
        emb = self.backbone.embed(t, prev_action, drop) + self.key_offset_embedding(key_offset)
        cache = None
        if self.backbone.causal and self.use_cache:
            cache = TemporalCache()
            self.backbone(frames, emb, cache)
            cache.extend()
        return HistoryContext(frames, emb, cache)

    def _denoise_new(self, x: torch.Tensor, emb: torch.Tensor, history: HistoryContext) -> torch.Tensor:
        """v for the new frame x [B', 3, H, W] with conditioning emb [B', E]; B' = r * B."""
        if history.cache is not None:
            return self.backbone(x[:, None], emb[:, None], history.cache)[:, 0]
        r = x.shape[0] // history.frames.shape[0]  # non-causal: the whole window, every time
        frames = torch.cat([history.frames.repeat(r, 1, 1, 1, 1), x[:, None]], dim=1)
        embs = torch.cat([history.emb.repeat(r, 1, 1), emb[:, None]], dim=1)
        return self.backbone(frames, embs)[:, -1]

    def guided_velocity(self, x: torch.Tensor, time_emb: torch.Tensor, action_emb: torch.Tensor,
                        history: HistoryContext, scale: float) -> torch.Tensor:
        """Classifier-free guidance on the new frame's action: v_u + s (v_c - v_u).
        x [B, 3, H, W], time_emb [E] or [B, E], action_emb [B, E] (conditional). Scale 1 (or an
        action-free model) returns the conditional prediction itself."""
        cond = time_emb + action_emb
        if scale == 1.0 or self.action_dim == 0:
            return self._denoise_new(x, cond, history)
        uncond = (time_emb + self.backbone.null_action).expand_as(cond)
        v_c, v_u = self._denoise_new(torch.cat([x, x]), torch.cat([cond, uncond]), history).chunk(2)
        return v_u + scale * (v_c - v_u)

    def sample_next(self, history: HistoryContext, action: torch.Tensor,
                    generator: torch.Generator | None = None, steps: int | None = None,
                    guidance_scale: float | None = None) -> torch.Tensor:
        """DDIM-denoise the frame after ``history`` given its action [B, A] -> [B, 3, H, W] in [-1, 1]."""
        steps = steps or self.config.sampling_steps
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        B = history.frames.shape[0]
        self.sampler.set_timesteps(steps, device=self.device)
        time_emb = self.backbone.embed_time(self.sampler.timesteps)  # [n, E], all steps at once
        action_emb = self.backbone.embed_action(action, torch.zeros(B, dtype=torch.bool, device=self.device))
        x = self._randn((B, FRAME_CHANNELS, self.image_size, self.image_size), generator)
        for i, t in enumerate(self.sampler.timesteps):
            v = self.guided_velocity(x, time_emb[i], action_emb, history, scale)
            x = self.sampler.step(v.float(), t, x).prev_sample
        return x.clamp(-1.0, 1.0)

    def select_context(self, state: ImaginationState, query: torch.Tensor | None = None) -> torch.Tensor:
        """Which stored frames condition the next frame: positions [B, m] into ``state.frames``,
        in temporal order, chosen by the memory (``query`` [B, K]: the key VRAG retrieves for)."""
        return self.memory.select(state.time, state.key, query)

    def _trim(self, state: ImaginationState) -> ImaginationState:
        """Apply the memory's bounding policy once the store exceeds its capacity."""
        if state.frames.shape[1] <= self.memory.capacity:
            return state
        return state.take(self.memory.keep(state.time, state.key))

    def _state_keys(self, keys: torch.Tensor, shape: tuple[int, ...], what: str, layout: str) -> torch.Tensor:
        """Caller-given state keys as float32 on the model's device, checked for ``shape`` and
        finiteness: a NaN key makes every distance NaN (retrieval then picks arbitrary frames)
        and, in training, would poison the fitted key dynamics for good."""
        keys = torch.as_tensor(keys, dtype=torch.float32, device=self.device)
        if tuple(keys.shape) != shape:
            raise WorldModelConfigError(f"{what} has shape {tuple(keys.shape)}; expected {layout} = {shape}.")
        if not bool(torch.isfinite(keys).all()):
            raise WorldModelConfigError(f"{what} has NaN or inf entries: state keys (poses, env states) must be "
                                        "finite.")
        return keys

    def _refuse_unused_keys(self, keys: torch.Tensor | None, what: str) -> None:
        """Caller keys are read only by a VRAG memory on state keys; elsewhere they would be
        silently ignored (a caller passing poses would believe retrieval used them)."""
        if keys is None or self.state_keys:
            return
        mem = self.memory.cfg
        uses = ("computes its keys from the frames (memory.key=pixel)" if self.memory.needs_keys
                else "retrieves by no key")
        raise WorldModelConfigError(f"{what} was given, but this model's {mem.name} memory {uses} and would ignore "
                                    f"it: pass {what}=None, or retrieve by these keys with memory.name=vrag, "
                                    "memory.key=state.")

    def _frame_keys(self, frames: torch.Tensor, keys: torch.Tensor | None, what: str) -> torch.Tensor | None:
        """Keys [B, n, K] of frames uint8 [B, n, 3, H, W]: pooled pixels, or the given state keys."""
        self._refuse_unused_keys(keys, what)
        if not self.memory.needs_keys:
            return None
        mem = self.memory.cfg
        if mem.key == "pixel":
            return pixel_key(frames, mem.key_size)
        if keys is None:
            raise WorldModelConfigError(
                f"memory.key=state needs {what}: the pose/state vector of each frame, e.g. from the env's "
                "info['state'] (the world model cannot see it in the frames); or use memory.key=pixel.")
        return self._state_keys(keys, (*frames.shape[:2], mem.key_dim), what, "[B, n, key_dim]")

    # ----- step-level imagination -----
    def reset(self, context_obs: torch.Tensor, generator: torch.Generator | None = None,
              context_keys: torch.Tensor | None = None) -> ImaginationState:
        """Start from real frames uint8 [B, T0, 3, H, W]; ``context_keys`` [B, T0, K] are their
        state keys, needed by a VRAG memory with ``key=state`` and refused by any other."""
        self._check_frames(context_obs, "context_obs", 5)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise WorldModelConfigError(f"generator must be a torch.Generator or None, got "
                                        f"{type(generator).__name__}; e.g. torch.Generator().manual_seed(0).")
        if context_obs.shape[1] < 1:
            raise WorldModelConfigError("reset needs at least one context frame.")
        frames = context_obs.to(self.device)
        B, n = frames.shape[:2]
        state = ImaginationState(frames=frames,
                                 prev_action=torch.zeros(B, n, self.action_dim, device=self.device),
                                 action_known=torch.zeros(B, n, dtype=torch.bool, device=self.device),
                                 generator=generator,
                                 time=torch.arange(n, device=self.device).expand(B, n),
                                 key=self._frame_keys(frames, context_keys, "context_keys"))
        return self._trim(state)

    def _next_key(self, state: ImaginationState, action: torch.Tensor, key: torch.Tensor | None) -> torch.Tensor | None:
        """The state key of the frame about to be imagined: given, or predicted from the last one."""
        self._refuse_unused_keys(key, "key")
        if not self.state_keys:
            return None
        if key is not None:
            return self._state_keys(key, (state.frames.shape[0], self.memory.cfg.key_dim), "key", "[B, key_dim]")
        if int(self.key_dynamics.count) == 0:
            raise WorldModelConfigError(
                "step needs the imagined frame's state key (key=[B, key_dim]): the key dynamics have not been "
                "fitted yet (train on KeyedSegmentBatch segments first) and the env state is not available "
                "inside imagination.")
        return self.key_dynamics(state.key[:, -1], action)

    @torch.no_grad()
    def step(self, state: ImaginationState, action: torch.Tensor,
             key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, ImaginationState]:
        """Imagine o_{t+1} from a_t. ``key`` [B, K]: the new frame's state key if known (e.g. a
        planned camera pose), for a VRAG memory with ``key=state`` (else it is predicted; any other
        memory refuses it)."""
        B = state.frames.shape[0]
        check_step_action(action, B, self.action_dim)
        action = action.to(self.device, torch.float32)
        next_key = self._next_key(state, action, key)
        query = next_key if self.state_keys else (None if state.key is None else state.key[:, -1])
        idx = self.select_context(state, query)  # [B, m]
        rows = torch.arange(B, device=idx.device)[:, None]
        # the first context frame, retrieved frames and jumps carry no action (as in training)
        drop = ~state.action_known[rows, idx] | gaps(state.time[rows, idx])
        offset = None if next_key is None else key_offset(state.key[rows, idx], next_key)
        with self.sampling_mode():
            with self._autocast():
                history = self.encode_history(to_float(state.frames[rows, idx]), state.prev_action[rows, idx],
                                              drop, state.generator, offset)
                frame = to_uint8(self.sample_next(history, action, state.generator))
            # fp32 (cheap): bf16 would round the symlog reward, 1.4% at a reward of 10
            reward = symexp(self.reward_head(to_float(state.frames[:, -1]), action, to_float(frame)))
        new_key = None
        if state.key is not None:
            new_key = next_key if next_key is not None else pixel_key(frame, self.memory.cfg.key_size)
            new_key = torch.cat([state.key, new_key[:, None]], dim=1)
        new_state = ImaginationState(
            frames=torch.cat([state.frames, frame[:, None]], dim=1),
            prev_action=torch.cat([state.prev_action, action[:, None]], dim=1),
            action_known=torch.cat([state.action_known, torch.ones_like(drop[:, :1])], dim=1),
            generator=state.generator,
            time=torch.cat([state.time, state.time[:, -1:] + 1], dim=1),
            key=new_key)
        return frame, reward, self._trim(new_state)
