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
(o_{t+1}, r_t, state). Per step: ``select_context`` picks the history frames (the most recent
``max_context_frames``), they are noised to ``history_noise_level`` and encoded once; the new
frame is denoised from pure noise with DDIM (``sampling_steps``), guided on its action with
``guidance_scale``. Cached within a step: the causal backbone's history features of every
temporal layer (``backbone.TemporalCache``; exact because history never sees the new frame),
shared by all denoising steps and both guidance branches, and the noise-level embeddings of
all DDIM steps and the action embedding. History features are not carried across steps: the
context window (or a retrieval memory) may change which frames are in it, and features of a
frame depend on the frames before it in the window.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from worldmodel.interface import SegmentBatch, WorldModel, WorldModelConfigError, read_config
from worldmodel.vid2world.backbone import TemporalCache, VideoUNet
from worldmodel.vid2world.configs import Vid2WorldConfig
from worldmodel.vid2world.reward import RewardHead, symexp, symlog

PIXEL_SCALE = 127.5  # uint8 [0, 255] <-> float [-1, 1]


def to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.to(torch.float32) / PIXEL_SCALE - 1.0


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return ((frames.float().clamp(-1, 1) + 1.0) * PIXEL_SCALE).round().to(torch.uint8)


@dataclass
class ImaginationState:
    """Everything imagined so far; ``step`` returns a new state and leaves this one intact."""

    frames: torch.Tensor  # uint8 [B, n, 3, H, W]: context then imagined frames
    prev_action: torch.Tensor  # float32 [B, n, A]: the action that led into each frame
    action_known: torch.Tensor  # bool [B, n]: False for real context frames (action unknown)
    generator: torch.Generator | None


@dataclass
class HistoryContext:
    """The encoded history for one imagined step."""

    frames: torch.Tensor  # float [B, m, 3, H, W], noised to history_noise_level
    emb: torch.Tensor  # [B, m, E] per-frame conditioning
    cache: TemporalCache | None  # recorded temporal features (causal backbone only)


class Vid2World(WorldModel):
    model_type = "vid2world"
    parts = ("diffusion", "reward")

    def __init__(self, config: Vid2WorldConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = config if config is not None else Vid2WorldConfig.from_dict(kwargs)
        cfg = self.config
        self.image_size, self.action_dim, self.context_frames = cfg.image_size, cfg.action_dim, cfg.context_frames
        self.backbone = VideoUNet(cfg.backbone_config())
        self.reward_head = RewardHead(cfg.image_size, cfg.action_dim, cfg.reward_channels, cfg.reward_hidden)
        schedule = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                        prediction_type="v_prediction")
        self.noise_scheduler = DDPMScheduler(**schedule, clip_sample=False)
        self.sampler = DDIMScheduler(**schedule, clip_sample=True, set_alpha_to_one=True,
                                     timestep_spacing="trailing")  # trailing: few steps start at pure noise
        self.optimizers = {
            "diffusion": torch.optim.AdamW(self.backbone.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
            "reward": torch.optim.AdamW(self.reward_head.parameters(), lr=cfg.reward_lr,
                                        weight_decay=cfg.weight_decay),
        }
        self.schedulers = {}
        # Reuse history features across denoising steps (causal backbone only); False recomputes
        # the whole window at every step (same result, slower; kept for benchmarks and checks).
        self.use_cache = True
        self.counters = {f"{p}_{c}": 0 for p in self.parts for c in ("updates", "nonfinite_skipped")}

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
        is causalised with ``causal_transfer`` (override or the checkpoint's own)."""
        config = read_config(directory)
        if not config.get("causal", True) and overrides.get("causal", False):
            from worldmodel.vid2world.causalize import causalize

            method = overrides.get("causal_transfer", config.get("causal_transfer", "extrapolative"))
            rest = {k: v for k, v in overrides.items() if k not in ("causal", "causal_transfer")}
            return causalize(super().from_pretrained(directory, **rest), method)
        return super().from_pretrained(directory, **overrides)

    # ----- input checks -----
    def _check_frames(self, obs: torch.Tensor, what: str, dims: int) -> None:
        shape = tuple(obs.shape)
        if obs.dtype != torch.uint8:
            raise WorldModelConfigError(f"{what} must be uint8 frames in [0, 255], got {obs.dtype}.")
        if obs.dim() != dims or shape[-3] != 3 or shape[-2:] != (self.image_size, self.image_size):
            want = "[B, T, 3, H, W]" if dims == 5 else "[B, 3, H, W]"
            raise WorldModelConfigError(
                f"{what} has shape {shape}; expected {want} with H = W = {self.image_size} (the "
                "model's image_size): render the env at that size or rebuild the model.")

    def _check_batch(self, batch: SegmentBatch) -> None:
        self._check_frames(batch.obs, "batch.obs", 5)
        B, T = batch.obs.shape[:2]
        if T < 2:
            raise WorldModelConfigError(f"segments need at least 2 frames, got T = {T}.")
        if tuple(batch.action.shape) != (B, T - 1, self.action_dim):
            raise WorldModelConfigError(
                f"batch.action has shape {tuple(batch.action.shape)}; expected [B, T-1, A] = "
                f"{(B, T - 1, self.action_dim)} (action[t] leads from obs[t] to obs[t+1]).")
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

        prev_action = torch.cat([action.new_zeros(B, 1, self.action_dim), action], dim=1)  # [B, T, A]
        drop = torch.rand(B, T, device=device) < cfg.action_dropout
        drop[:, 0] = True  # frame 0 has no previous action
        with self._autocast():
            pred = self.backbone(noisy, self.backbone.embed(t, prev_action, drop))
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
        with self._autocast():
            pred = self.reward_head(obs[:, :-1].flatten(0, 1), action.flatten(0, 1), obs[:, 1:].flatten(0, 1))
        loss = (pred.float() - symlog(reward.flatten())).pow(2).mean()
        return loss, {"reward/loss": loss.item()}

    def _optimize(self, part: str, loss: torch.Tensor, module: torch.nn.Module) -> dict[str, float]:
        opt = self.optimizers[part]
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.counters[f"{part}_nonfinite_skipped"] += 1
            return {f"{part}/skipped": 1.0}
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        if not torch.isfinite(grad_norm):
            opt.zero_grad(set_to_none=True)
            self.counters[f"{part}_nonfinite_skipped"] += 1
            return {f"{part}/skipped": 1.0}
        opt.step()
        self.counters[f"{part}_updates"] += 1
        return {f"{part}/grad_norm": grad_norm.item()}

    def update(self, batch: SegmentBatch, parts: tuple[str, ...] | None = None) -> dict[str, float]:
        parts = self._check_parts(parts)
        self._check_batch(batch)
        batch = batch.to(self.device)
        obs, action = to_float(batch.obs), batch.action.float()
        self.train()
        metrics: dict[str, float] = {}
        if "diffusion" in parts:
            loss, m = self.diffusion_loss(obs, action)
            metrics.update(m)
            metrics.update(self._optimize("diffusion", loss, self.backbone))
        if "reward" in parts:
            loss, m = self.reward_loss(obs, action, batch.reward.float())
            metrics.update(m)
            metrics.update(self._optimize("reward", loss, self.reward_head))
        return metrics

    # ----- sampling -----
    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=device).to(self.device)

    def encode_history(self, frames: torch.Tensor, prev_action: torch.Tensor, drop: torch.Tensor,
                       generator: torch.Generator | None = None) -> HistoryContext:
        """History frames float [B, m, 3, H, W] -> noised to history_noise_level, embedded, and
        (causal backbone) run once through the denoiser to record its temporal cache."""
        level = self.config.history_noise_level
        t = torch.full(frames.shape[:2], level, device=self.device, dtype=torch.long)
        if level > 0:
            noise = self._randn(tuple(frames.shape), generator)
            frames = self.noise_scheduler.add_noise(frames.flatten(0, 1), noise.flatten(0, 1),
                                                    t.flatten()).view_as(frames)
        emb = self.backbone.embed(t, prev_action, drop)
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
        x = self._randn((B, 3, self.image_size, self.image_size), generator)
        for i, t in enumerate(self.sampler.timesteps):
            v = self.guided_velocity(x, time_emb[i], action_emb, history, scale)
            x = self.sampler.step(v.float(), t, x).prev_sample
        return x.clamp(-1.0, 1.0)

    def select_context(self, state: ImaginationState) -> torch.Tensor:
        """Which history frames condition the next frame: indices [B, m] into ``state.frames``.
        The default is a sliding window of the ``max_context_frames`` most recent frames; a
        retrieval memory (VRAG) replaces this method."""
        B, n = state.frames.shape[:2]
        start = max(0, n - self.config.max_context_frames)
        return torch.arange(start, n, device=state.frames.device).expand(B, -1)

    # ----- step-level imagination -----
    def reset(self, context_obs: torch.Tensor, generator: torch.Generator | None = None) -> ImaginationState:
        self._check_frames(context_obs, "context_obs", 5)
        if context_obs.shape[1] < 1:
            raise WorldModelConfigError("reset needs at least one context frame.")
        frames = context_obs.to(self.device)
        B, n = frames.shape[:2]
        return ImaginationState(frames=frames,
                                prev_action=torch.zeros(B, n, self.action_dim, device=self.device),
                                action_known=torch.zeros(B, n, dtype=torch.bool, device=self.device),
                                generator=generator)

    @torch.no_grad()
    def step(self, state: ImaginationState, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, ImaginationState]:
        B = state.frames.shape[0]
        if tuple(action.shape) != (B, self.action_dim):
            raise WorldModelConfigError(
                f"action has shape {tuple(action.shape)}; expected [B, A] = {(B, self.action_dim)}.")
        action = action.to(self.device, torch.float32)
        idx = self.select_context(state)  # [B, m]
        rows = torch.arange(B, device=idx.device)[:, None]
        drop = ~state.action_known[rows, idx]
        drop[:, 0] = True  # the window's first frame is conditioned as a segment's first frame
        with self._autocast():
            history = self.encode_history(to_float(state.frames[rows, idx]), state.prev_action[rows, idx],
                                          drop, state.generator)
            frame = to_uint8(self.sample_next(history, action, state.generator))
            reward = self.reward_head(to_float(state.frames[:, -1]), action, to_float(frame))
        reward = symexp(reward.float())
        new_state = ImaginationState(
            frames=torch.cat([state.frames, frame[:, None]], dim=1),
            prev_action=torch.cat([state.prev_action, action[:, None]], dim=1),
            action_known=torch.cat([state.action_known, torch.ones_like(drop[:, :1])], dim=1),
            generator=state.generator)
        return frame, reward, new_state
