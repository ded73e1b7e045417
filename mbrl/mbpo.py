"""MBPO with a video world model (iVideoGPT's adaptation of MBPO to DrQ-v2).

The loop calls ``on_step`` after every env step. Once ``start_frames`` frames are in, the world
model is trained on real segments (each part at its own frequency, from the world model's config),
and every ``gen_every_frames`` a batch of k-step rollouts is imagined from real observations with
the current policy, exploration noise included, and stored in the imagined buffer. Agent batches
then mix ``real_ratio`` real transitions with imagined ones.

Alignment (checked in tests): rollouts use the world-model interface's convention, so the
imagined reward for (o_t, a_t) is stored where the real buffer stores r_t; imagined frames are
uint8 like real ones and are scaled once, inside the agent's encoder.
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mbrl.replay import TransitionBatch
from mbrl.replay.imagined_buffer import ImaginedReplayBuffer
from mbrl.replay.real_buffer import RealReplayBuffer
from mbrl.utils import atomic_write
from mbrl.video import comparison_video, write_video
from worldmodel.interface import WorldModel, WorldModelConfigError


IMAGINED_NAME = "imagined.npz"  # the imagined buffer, beside the run's checkpoint
VALIDATION_STREAM = 1  # validate()'s random stream: np.random.default_rng([seed, VALIDATION_STREAM, frame])


def crossed(prev_frame: int, frame: int, every: int) -> int:
    """How many multiples of ``every`` lie in (prev_frame, frame]."""
    return 0 if every <= 0 else frame // every - prev_frame // every


def rollout_policy(agent, prefix: torch.Tensor, frame_stack: int, step: int):
    """The agent as a policy inside the world model, with its exploration noise. ``prefix`` holds
    the real frames before the world model's context, so the first imagined steps see a full real
    frame stack; frames stay uint8 and are scaled once, in the agent's encoder, as real ones are."""
    def policy(frames: torch.Tensor) -> torch.Tensor:  # frames uint8 [B, t, 3, H, W]
        history = torch.cat([prefix, frames], 1)[:, -frame_stack:]
        obs = history.reshape(history.shape[0], -1, *history.shape[-2:])  # [B, 3*fs, H, W]
        return agent.act(obs, step, eval_mode=False)
    return policy


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of frames in [0, 1] from their mean squared error."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class MBPO:
    def __init__(self, cfg: Mapping[str, Any], wm_cfg: Mapping[str, Any], world_model: WorldModel, agent,
                 real: RealReplayBuffer, frame_stack: int, nstep: int, discount: float,
                 device: torch.device, seed: int) -> None:
        self.cfg, self.world_model, self.agent, self.real = cfg, world_model, agent, real
        self.frame_stack, self.device = frame_stack, device
        self.update_every = dict(wm_cfg["update_every_frames"])
        unknown = set(self.update_every) - set(world_model.parts)
        if unknown:
            raise WorldModelConfigError(f"world_model.update_every_frames names {sorted(unknown)}, but this world "
                                        f"model trains the parts {list(world_model.parts)}; list only those.")
        self.wm_batch_size = int(wm_cfg["batch_size"])
        self.segment_length = int(wm_cfg["segment_length"])
        # Refused now, not after the first world-model updates.
        world_model.check_segment_length(self.segment_length)
        world_model.check_horizon(int(cfg["gen_horizon"]))
        if world_model.needs_frame_keys:
            raise WorldModelConfigError(
                "this world model needs a state key per frame (e.g. memory.key=state), which the MBPO loop does "
                "not record (it keeps frames, actions and rewards); use memory.key=pixel.")
        self.imagined = ImaginedReplayBuffer(cfg["imagined_capacity"], cfg["gen_horizon"],
                                             world_model.image_size, world_model.action_dim,
                                             frame_stack, nstep, discount)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.started = False
        self.needs_refill = False  # set on resume without a saved imagined buffer: it is regenerated
        self.wm_updates = 0

    # ----- schedule -----
    def on_step(self, prev_frame: int, frame: int, step: int, timer) -> dict[str, float]:
        """Run what the schedule asks for between two frame counts; returns world-model metrics."""
        metrics: dict[str, float] = {}
        if frame < self.cfg["start_frames"] or self.real.num_episodes == 0:
            return metrics  # (segments come from finished episodes only)
        if not self.started:
            self.started = True
            with timer("world_model"):
                for _ in range(self.cfg["init_wm_updates"]):
                    metrics = self.train_world_model(None)
            with timer("imagination"):
                # The step of the agent's latest action, as the official code's `global_step - 1`
                # ("random action for init gen"): the agent's schedule decides. At the reference
                # settings (start_frames = num_seed_frames = num_expl_steps x action_repeat) that
                # is num_expl_steps - 1, so uniform random actions, like the real seed data the world
                # model has just been trained on; with a later start_frames, the trained policy.
                for _ in range(self.cfg["init_rollout_batches"]):
                    self.generate(step - 1)
            return metrics
        if self.needs_refill:
            self.needs_refill = False
            with timer("imagination"):
                for _ in range(self.cfg["init_rollout_batches"]):
                    self.generate(step)
        with timer("world_model"):
            for part, every in self.update_every.items():
                for _ in range(crossed(prev_frame, frame, every)):
                    metrics.update(self.train_world_model((part,)))
        with timer("imagination"):
            for _ in range(crossed(prev_frame, frame, self.cfg["gen_every_frames"])):
                self.generate(step)
        return metrics

    def train_world_model(self, parts: tuple[str, ...] | None) -> dict[str, float]:
        batch = self.real.sample_segments(self.wm_batch_size, self.segment_length, self.rng).to(self.device)
        metrics = self.world_model.update(batch, parts=parts)
        self.wm_updates += 1
        return metrics

    # ----- imagination -----
    @torch.no_grad()
    def generate(self, step: int) -> int:
        """Imagine ``gen_batch`` rollouts from real observations; returns how many were stored."""
        t0 = self.world_model.context_frames
        length = max(t0, self.frame_stack)
        start = self.real.sample_context(self.cfg["gen_batch"], length, self.rng).to(self.device)
        context, prefix = start[:, length - t0:], start[:, :length - t0]
        rollout = self.world_model.rollout(context, rollout_policy(self.agent, prefix, self.frame_stack, step),
                                           self.cfg["gen_horizon"], generator=self.generator)
        stack_prefix = start[:, length - self.frame_stack:-1]  # fs-1 real frames before the start
        return self.imagined.add(stack_prefix, rollout)

    def agent_batch(self, batch_size: int) -> TransitionBatch:
        """``real_ratio`` of the batch from the real buffer, the rest imagined (all real before
        the first rollouts): real rows first. A source with no rows is not sampled (real_ratio
        1 or 0)."""
        n_real = int(round(batch_size * self.cfg["real_ratio"]))
        if len(self.imagined) == 0 or n_real >= batch_size:
            return self.real.sample(batch_size, self.rng)
        if n_real <= 0:
            return self.imagined.sample(batch_size, self.rng)
        return TransitionBatch.cat([self.real.sample(n_real, self.rng),
                                    self.imagined.sample(batch_size - n_real, self.rng)])

    # ----- validation -----
    @torch.no_grad()
    def validate(self, video_path: Path | None, video_scale: int, frame: int) -> dict[str, float]:
        """Open-loop prediction from real context with the real actions: frame MSE/PSNR (and the
        copy-last-frame baseline), reward MSE, and an mp4 with real and imagined side by side.
        Segments and sampling noise come from a stream of their own (seeded by the run's seed and
        ``frame``), so validating, or how often, does not change what the run trains on."""
        t0, horizon = self.world_model.context_frames, self.cfg["gen_horizon"]
        rng = np.random.default_rng([self.seed, VALIDATION_STREAM, frame])
        generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        batch = self.real.sample_segments(self.cfg["validate_batch"], t0 + horizon, rng).to(self.device)
        frames, rewards = [], []
        with self.world_model.sampling_mode():
            state = self.world_model.reset(batch.obs[:, :t0], generator=generator)
            for i in range(horizon):
                frame, reward, state = self.world_model.step(state, batch.action[:, t0 - 1 + i])
                frames.append(frame)
                rewards.append(reward)
        imagined = torch.stack(frames, 1).float() / 255  # [B, k, 3, H, W]
        real = batch.obs[:, t0:].float() / 255
        last = batch.obs[:, t0 - 1:t0].float() / 255
        mse = ((imagined - real) ** 2).mean((0, 2, 3, 4))  # per step [k]
        copy_mse = ((last - real) ** 2).mean((0, 2, 3, 4))
        reward_mse = ((torch.stack(rewards, 1) - batch.reward[:, t0 - 1:]) ** 2).mean()
        metrics = {"frame_mse": mse.mean().item(), "psnr": psnr(mse).mean().item(),
                   "copy_last_psnr": psnr(copy_mse).mean().item(), "reward_mse": reward_mse.item()}
        if video_path is not None:
            full = torch.cat([batch.obs[:, :t0], torch.stack(frames, 1)], 1)
            grid = comparison_video(batch.obs.cpu().numpy(), full.cpu().numpy(), t0)
            write_video(video_path, grid, fps=4, scale=video_scale)
        return metrics

    # ----- checkpoints -----
    def state_dict(self) -> dict[str, Any]:
        return {"world_model": self.world_model.state_dict(),
                "world_model_training": self.world_model.training_state(),
                "started": self.started, "wm_updates": self.wm_updates,
                "imagined_added": self.imagined.total_added, "imagined_dropped": self.imagined.total_dropped,
                "rng": self.rng.bit_generator.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.world_model.load_training_state(state["world_model_training"])
        self.wm_updates = state["wm_updates"]
        self.imagined.total_added = state["imagined_added"]
        self.imagined.total_dropped = state["imagined_dropped"]
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        self.started = state["started"]
        self.needs_refill = self.started

    def save_imagined(self, directory: str | Path) -> None:
        """With ``checkpoint_imagined``: the imagined buffer beside the checkpoint (an uncompressed
        npz, written atomically, before the checkpoint), so a resumed run goes on with its rollouts."""
        if self.cfg["checkpoint_imagined"]:
            arrays = self.imagined.state_arrays()
            atomic_write(Path(directory) / IMAGINED_NAME, lambda f: np.savez(f, **arrays))

    def load_imagined(self, directory: str | Path) -> None:
        """After ``load_state_dict``: the saved imagined buffer, if it belongs to the checkpoint (the
        rollouts it counts as added match); otherwise ``init_rollout_batches`` fresh batches are
        imagined at the next step."""
        path = Path(directory) / IMAGINED_NAME
        if not (self.needs_refill and self.cfg["checkpoint_imagined"] and path.is_file()):
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            added = int(arrays["counters"][2])
            if added != self.imagined.total_added:
                raise ValueError(f"it holds the buffer after {added} rollouts, the checkpoint after "
                                 f"{self.imagined.total_added} (killed between the two writes)")
            self.imagined.load_state_arrays(arrays)
        except (OSError, ValueError, KeyError, EOFError, IndexError, zipfile.BadZipFile) as e:
            print(f"[train] {path} is not used ({e}); imagining {self.cfg['init_rollout_batches']} fresh "
                  "rollout batches instead", file=sys.stderr)
            return
        self.needs_refill = False
