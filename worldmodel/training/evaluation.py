"""Evaluation of a stage on held-out segments: scalar metrics and a real-vs-predicted video.

    tokenizer    val losses, reconstruction PSNR / SSIM (context and future frames) [, LPIPS]
    transformer  teacher-forced token CE / accuracy / symlog reward MSE; open loop from the real
                 context with the real actions (``reset`` / ``step``): PSNR / SSIM of the imagined
                 frames, reward MSE [, LPIPS, FVD and fvd_videos]
    diffusion    val diffusion loss; open loop as above [, LPIPS, FVD and fvd_videos]
    reward       symlog and raw reward MSE on real transitions

Runs in eval mode without gradients; the caller isolates the RNG (``torch.random.fork_rng``) so
evaluating never changes the training stream. Videos: uint8 [T, 3, n*H, 2*W], real on the left,
predicted on the right, one row per sample.

FVD compares ``EvalTools.fvd_videos`` real segments (context + future) with their open-loop
imagination: the videos of the eval batches first, then those of ``EvalTools.fvd_batches`` (the
next batches of the same fixed held-out stream), so the set is the same at every evaluation and
restart. I3D runs on each batch as it comes (only features are kept; those of the real videos are
computed at the first evaluation and reused); ``fvd_videos`` is logged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldmodel.interface import SegmentBatch, WorldModel
from worldmodel.training.metrics import FVD, FVD_RECOMMENDED_VIDEOS, LPIPS, psnr, ssim


@dataclass
class EvalTools:
    video_samples: int = 2  # samples shown in the video
    open_loop: bool = True  # imagine with reset/step (the slow part of the transformer / diffusion eval)
    seed: int = 0  # sampling seed of the open-loop rollouts (the same every evaluation)
    lpips: LPIPS | None = None
    fvd: FVD | None = None
    fvd_videos: int = FVD_RECOMMENDED_VIDEOS  # videos per FVD set: the first ones of the eval batches, then
    fvd_batches: Sequence[SegmentBatch] = field(default_factory=list)  # these further fixed held-out batches
    # I3D features of the real videos, in the order FVD adds them: they are the same fixed segments at
    # every evaluation, so I3D runs on them once (filled by the first evaluation)
    fvd_real_features: list[np.ndarray] = field(default_factory=list)


class _FVDFeatures:
    """I3D features of real and imagined videos, batch by batch, up to ``tools.fvd_videos``."""

    def __init__(self, fvd: FVD, videos: int, real_cache: list[np.ndarray]):
        self.fvd, self.videos, self.real_cache = fvd, videos, real_cache
        self.real: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.videos

    def add(self, real: torch.Tensor, pred: torch.Tensor) -> None:
        """uint8 [B, T, 3, H, W] x2: the first videos still needed."""
        take = min(len(real), self.videos - self.count)
        if take > 0:
            if len(self.real) == len(self.real_cache):  # first evaluation: I3D on the real videos too
                self.real_cache.append(self.fvd.features(real[:take]))
            self.real.append(self.real_cache[len(self.real)])
            self.pred.append(self.fvd.features(pred[:take]))
            self.count += take

    def metrics(self) -> dict[str, float]:
        return {"open_loop_fvd": self.fvd.distance(np.concatenate(self.real), np.concatenate(self.pred)),
                "fvd_videos": float(self.count)}


def side_by_side(real: torch.Tensor, pred: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [B, T, 3, H, W] x2 -> [T, 3, n*H, 2*W] (first n samples, real | predicted)."""
    pair = torch.cat([real[:n], pred[:n]], dim=-1)  # [n, T, 3, H, 2W]
    return torch.cat(list(pair), dim=-2).cpu()  # [T, 3, nH, 2W]


def _mean(values: list[torch.Tensor]) -> float:
    return float(torch.cat([v.flatten().float().cpu() for v in values]).mean())


def _open_loop(model: WorldModel, batch: SegmentBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Imagine the segment's future from its first context_frames with its real actions.
    Returns (frames uint8 [B, k, 3, H, W], rewards [B, k])."""
    T0 = model.context_frames
    k = batch.obs.shape[1] - T0
    generator = torch.Generator(device=model.device.type).manual_seed(seed)
    state = model.reset(batch.obs[:, :T0].to(model.device), generator=generator)
    frames, rewards = [], []
    for j in range(k):
        frame, reward, state = model.step(state, batch.action[:, T0 - 1 + j].to(model.device))
        frames.append(frame)
        rewards.append(reward)
    return torch.stack(frames, 1).cpu(), torch.stack(rewards, 1).float().cpu()


def _frame_scores(real: torch.Tensor, pred: torch.Tensor, prefix: str, tools: EvalTools) -> dict[str, torch.Tensor]:
    scores = {f"{prefix}psnr": psnr(real, pred), f"{prefix}ssim": ssim(real, pred)}
    if tools.lpips is not None:
        scores[f"{prefix}lpips"] = tools.lpips(real, pred)
    return scores


@torch.no_grad()
def evaluate(model: WorldModel, stage: str, batches: list[SegmentBatch],
             tools: EvalTools) -> tuple[dict[str, float], torch.Tensor | None]:
    """Metrics of ``stage`` on ``batches`` and a video (or None)."""
    fn = {"tokenizer": _tokenizer, "transformer": _open_loop_stage, "diffusion": _open_loop_stage,
          "reward": _reward}[stage]
    with model.sampling_mode():
        return fn(model, stage, batches, tools)


def _collect(per_batch: list[dict[str, Any]]) -> dict[str, float]:
    keys = per_batch[0].keys()
    return {k: _mean([b[k] for b in per_batch]) for k in keys}


def _tokenizer(model: WorldModel, stage: str, batches: list[SegmentBatch], tools: EvalTools):
    from worldmodel.ivideogpt.model import frames_to_unit, unit_to_frames

    T0, rows, video = model.context_frames, [], None
    for batch in batches:
        obs = batch.obs.to(model.device)
        loss, m = model.tokenizer(frames_to_unit(obs))
        recon = unit_to_frames(model.tokenizer.last_recon).cpu()  # [B, T, 3, H, W]
        obs = obs.cpu()
        row = {"loss": loss.detach().reshape(1), "rec_loss": m["rec_loss"].reshape(1)}
        row.update(_frame_scores(obs[:, :T0], recon[:, :T0], "context_", tools))
        row.update(_frame_scores(obs[:, T0:], recon[:, T0:], "future_", tools))
        rows.append(row)
        if video is None:
            video = side_by_side(obs, recon, tools.video_samples)
    return _collect(rows), video


def _imagined_video(model: WorldModel, batch: SegmentBatch,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(imagined frames [B, k, 3, H, W], rewards [B, k], the real context + imagined frames [B, T, ...])."""
    frames, rewards = _open_loop(model, batch, seed)
    return frames, rewards, torch.cat([batch.obs[:, :model.context_frames], frames], 1)


def _fvd_metrics(model: WorldModel, tools: EvalTools, fvd: _FVDFeatures, first: int) -> dict[str, float]:
    """FVD over ``tools.fvd_videos`` videos: those already added, then the videos of
    ``tools.fvd_batches`` (rollout seeds continue from batch index ``first``)."""
    for j, batch in enumerate(tools.fvd_batches):
        if fvd.full:
            break
        fvd.add(batch.obs, _imagined_video(model, batch, tools.seed + first + j)[2])
    return fvd.metrics()


def _open_loop_stage(model: WorldModel, stage: str, batches: list[SegmentBatch], tools: EvalTools):
    T0, rows, video = model.context_frames, [], None
    fvd = (_FVDFeatures(tools.fvd, tools.fvd_videos, tools.fvd_real_features)
           if tools.fvd is not None and tools.open_loop else None)
    for j, batch in enumerate(batches):
        row: dict[str, torch.Tensor] = {}
        device_batch = batch.to(model.device)
        if stage == "transformer":
            from worldmodel.ivideogpt.model import frames_to_unit
            from worldmodel.ivideogpt.transformer import symlog

            ctx, fut = model.tokenize(frames_to_unit(device_batch.obs))
            act = device_batch.action[:, T0 - 1:].float() if model.action_dim > 0 else None
            _, _, m = model.transformer.loss(ctx, fut, act, symlog(device_batch.reward[:, T0 - 1:].float()))
            row.update({f"teacher_forced_{k}": v.reshape(1) for k, v in m.items()})
        else:
            loss, _ = model.diffusion_objective(device_batch)  # what training minimises, memory clips included
            row["diffusion_loss"] = loss.detach().reshape(1)
        if tools.open_loop:
            frames, rewards, pred = _imagined_video(model, batch, tools.seed + j)
            row.update(_frame_scores(batch.obs[:, T0:], frames, "open_loop_", tools))
            row["open_loop_last_psnr"] = psnr(batch.obs[:, -1], frames[:, -1])
            row["open_loop_reward_mse"] = (rewards - batch.reward[:, T0 - 1:].float()).pow(2).mean().reshape(1)
            if fvd is not None:
                fvd.add(batch.obs, pred)
            if video is None:
                video = side_by_side(batch.obs, pred, tools.video_samples)
        rows.append(row)
    metrics = _collect(rows)
    if fvd is not None:
        metrics.update(_fvd_metrics(model, tools, fvd, len(batches)))
    return metrics, video


def _reward(model: WorldModel, stage: str, batches: list[SegmentBatch], tools: EvalTools):
    from worldmodel.vid2world.model import to_float
    from worldmodel.vid2world.reward import symexp

    rows = []
    for batch in batches:
        b = batch.to(model.device)
        obs, action = to_float(b.obs), b.action.float()
        loss, _ = model.reward_loss(obs, action, b.reward.float())
        pred = model.reward_head(obs[:, :-1].flatten(0, 1), action.flatten(0, 1), obs[:, 1:].flatten(0, 1))
        raw = (symexp(pred.float()) - b.reward.flatten().float()).pow(2).mean()
        rows.append({"symlog_reward_mse": loss.detach().reshape(1), "reward_mse": raw.reshape(1)})
    return _collect(rows), None
