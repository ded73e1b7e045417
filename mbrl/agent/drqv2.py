"""DrQ-v2 (Yarats et al. 2021): DDPG from pixels with random-shift augmentation, n-step
returns, clipped double Q and a scheduled exploration std.

One update = augment (obs, next_obs) -> encode -> critic step (which also trains the
encoder) -> actor step on detached features -> soft update of the target critic. The target
critic shares the online encoder, as in DrQ-v2. `step` everywhere is the loop's agent-step
counter (DrQ-v2's `global_step`): it drives the std schedule and the uniform-exploration
phase.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mbrl.agent.augment import RandomShiftsAug
from mbrl.agent.networks import ACTION_HIGH, ACTION_LOW, Actor, Critic, Encoder
from mbrl.agent.schedule import Schedule
from mbrl.replay.batch import TransitionBatch
from mbrl.utils import ConfigValueError
from worldmodel.interface import Policy

# Keys of cfgs/agent/drqv2.yaml read by the training loop / replay, not by this class.
LOOP_KEYS = ("nstep", "discount", "batch_size", "update_every_steps", "update_times")
_NETS = ("encoder", "actor", "critic", "critic_target")
_OPTS = ("encoder_opt", "actor_opt", "critic_opt")
FRAME_CHANNELS = 3  # RGB frames are stacked along channels: obs_shape[0] = 3 * frame_stack


class DrQV2Agent:
    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int,
                 device: str | torch.device, lr: float, feature_dim: int, hidden_dim: int,
                 critic_target_tau: float, stddev_schedule: str, stddev_clip: float,
                 num_expl_steps: int, aug_pad: int, weight_decay: float = 0.0):
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.action_dim = int(action_dim)
        if self.action_dim < 1:
            raise ConfigValueError(f"action_dim must be >= 1, got {action_dim}.")
        if not 0.0 < critic_target_tau <= 1.0:
            raise ConfigValueError(f"agent.critic_target_tau must be in (0, 1], got {critic_target_tau}.")
        if not lr > 0 or not weight_decay >= 0 or not stddev_clip >= 0 or num_expl_steps < 0 or aug_pad < 0:
            raise ConfigValueError(
                f"agent.lr must be > 0 and agent.weight_decay, stddev_clip, num_expl_steps, aug_pad >= 0; got "
                f"{lr}, {weight_decay}, {stddev_clip}, {num_expl_steps}, {aug_pad}.")
        self.device = torch.device(device)
        self.critic_target_tau = float(critic_target_tau)
        self.stddev_schedule = Schedule(stddev_schedule)
        self.stddev_clip = float(stddev_clip)
        self.num_expl_steps = int(num_expl_steps)

        self.encoder = Encoder(self.obs_shape).to(self.device)
        repr_dim = self.encoder.repr_dim
        self.actor = Actor(repr_dim, self.action_dim, feature_dim, hidden_dim).to(self.device)
        self.critic = Critic(repr_dim, self.action_dim, feature_dim, hidden_dim).to(self.device)
        self.critic_target = Critic(repr_dim, self.action_dim, feature_dim, hidden_dim)
        self.critic_target.to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.aug = RandomShiftsAug(aug_pad)

        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), lr=lr, weight_decay=weight_decay)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr, weight_decay=weight_decay)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], obs_shape: tuple[int, int, int],
                    action_dim: int, device: str | torch.device,
                    num_expl_steps: int | None = None) -> "DrQV2Agent":
        """Build from cfg.agent (cfgs/agent/drqv2.yaml); the loop's keys are skipped.
        ``num_expl_steps``: the loop's value for a null ``agent.num_expl_steps``."""
        kwargs = {k: v for k, v in dict(cfg).items() if k not in LOOP_KEYS}
        if kwargs.get("num_expl_steps") is None:
            if num_expl_steps is None:
                raise ConfigValueError("agent.num_expl_steps is null: the training loop fills it in "
                                       "(num_seed_frames / action_repeat); pass num_expl_steps or set it.")
            kwargs["num_expl_steps"] = num_expl_steps
        try:
            return cls(obs_shape=obs_shape, action_dim=action_dim, device=device, **kwargs)
        except TypeError as e:
            raise ConfigValueError(f"bad agent config {sorted(kwargs)}: {e}. "
                                   "See cfgs/agent/drqv2.yaml for the expected keys.") from None

    def train(self, training: bool = True) -> None:
        self.training = training
        for net in (self.encoder, self.actor, self.critic):
            net.train(training)

    def _check_obs(self, obs: torch.Tensor, name: str) -> None:
        if obs.dim() != 4 or tuple(obs.shape[1:]) != self.obs_shape:
            expected = ", ".join(map(str, self.obs_shape))
            raise ValueError(f"{name} has shape {tuple(obs.shape)}, expected [B, {expected}] "
                             "(a batch of frame stacks).")
        if obs.dtype != torch.uint8:
            raise ValueError(f"{name} has dtype {obs.dtype}; pass raw uint8 frames "
                             "(the encoder does the /255 scaling itself).")

    # ----- acting -----
    @torch.no_grad()
    def act(self, obs: torch.Tensor, step: int, eval_mode: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, C, H, W] on any device -> actions float32 [B, A] in [-1, 1] on self.device.
        eval_mode: the mean action. Training before num_expl_steps: uniform random actions."""
        self._check_obs(obs, "obs")
        batch = obs.shape[0]
        if not eval_mode and step < self.num_expl_steps:
            gen_device = generator.device if generator is not None else self.device
            noise = torch.rand(batch, self.action_dim, generator=generator, device=gen_device)
            return (ACTION_LOW + (ACTION_HIGH - ACTION_LOW) * noise).to(self.device)
        dist = self.actor(self.encoder(obs.to(self.device)), self.stddev_schedule(step))
        return dist.mean if eval_mode else dist.sample(clip=None, generator=generator)

    def policy(self, step: int, eval_mode: bool = False,
               generator: torch.Generator | None = None) -> Policy:
        """`act` as a world-model `Policy`: frames so far uint8 [B, t, 3, H, W] -> actions [B, A].
        Stacks the newest frames (oldest first); if t is shorter than the stack, the first frame
        is repeated, as at a real episode start."""
        stack = self.obs_shape[0] // FRAME_CHANNELS

        def policy(frames: torch.Tensor) -> torch.Tensor:
            frames = frames[:, -stack:]  # [B, <=stack, 3, H, W]
            if frames.shape[1] < stack:
                first = frames[:, :1].expand(-1, stack - frames.shape[1], -1, -1, -1)
                frames = torch.cat([first, frames], 1)
            return self.act(frames.flatten(1, 2), step, eval_mode, generator)  # [B, 3*stack, H, W]

        return policy

    # ----- learning -----
    def update(self, batch: TransitionBatch, step: int) -> dict[str, float]:
        """One critic + actor step and a soft target update on an n-step batch."""
        self._check_obs(batch.obs, "batch.obs")
        batch = batch.to(self.device)
        obs = self.encoder(self.aug(batch.obs))  # [B, repr_dim], with grad for the critic
        with torch.no_grad():
            next_obs = self.encoder(self.aug(batch.next_obs))
        stddev = self.stddev_schedule(step)
        metrics = self._update_critic(obs, batch.action, batch.reward, batch.discount,
                                      next_obs, stddev)
        metrics.update(self._update_actor(obs.detach(), stddev))
        self._soft_update_target()
        metrics["batch_reward"] = batch.reward.mean()
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float() for k in names]).tolist()  # one sync
        return {**dict(zip(names, values)), "actor_stddev": stddev}

    def _update_critic(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                       discount: torch.Tensor, next_obs: torch.Tensor,
                       stddev: float) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_action = self.actor(next_obs, stddev).sample(clip=self.stddev_clip)
            target_q1, target_q2 = self.critic_target(next_obs, next_action)  # [B, 1] each
            target_q = reward[:, None] + discount[:, None] * torch.min(target_q1, target_q2)
        q1, q2 = self.critic(obs, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        self.encoder_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.encoder_opt.step()
        return {"critic_loss": critic_loss, "critic_target_q": target_q.mean(),
                "critic_q1": q1.mean(), "critic_q2": q2.mean()}

    def _update_actor(self, obs: torch.Tensor, stddev: float) -> dict[str, torch.Tensor]:
        dist = self.actor(obs, stddev)
        action = dist.sample(clip=self.stddev_clip)
        self.critic.requires_grad_(False)  # gradients flow through Q to the action only
        q1, q2 = self.critic(obs, action)
        self.critic.requires_grad_(True)
        actor_loss = -torch.min(q1, q2).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            log_prob = dist.log_prob(action).sum(-1).mean()
            entropy = dist.entropy().sum(-1).mean()
        return {"actor_loss": actor_loss, "actor_logprob": log_prob, "actor_ent": entropy}

    @torch.no_grad()
    def _soft_update_target(self) -> None:
        """target <- (1 - tau) * target + tau * online, for every critic parameter."""
        torch._foreach_lerp_(list(self.critic_target.parameters()),
                             list(self.critic.parameters()), self.critic_target_tau)

    # ----- checkpoints -----
    def state_dict(self) -> dict[str, Any]:
        """Networks and optimisers (everything needed to resume training)."""
        return {name: getattr(self, name).state_dict() for name in _NETS + _OPTS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in _NETS + _OPTS if k not in state]
        if missing:
            raise ValueError(f"agent checkpoint lacks {missing}; expected the output of "
                             "DrQV2Agent.state_dict().")
        for name in _NETS:
            try:
                getattr(self, name).load_state_dict(state[name])
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1].strip()
                raise ValueError(
                    f"agent checkpoint '{name}' does not fit this agent (obs_shape "
                    f"{self.obs_shape}, action_dim {self.action_dim}): {first}. Was it saved "
                    "with a different frame size, frame stack, action space or network size?"
                ) from None
        for name in _OPTS:
            getattr(self, name).load_state_dict(state[name])
