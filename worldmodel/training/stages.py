"""Training stages: one trained part of a world model, wrapped so that ``forward`` returns the loss.

A stage module registers exactly the part it trains as a child (under the model's own attribute
name, so its state-dict keys are the model's; a part may span several attributes, e.g. Vid2World's
backbone and its memory's key embedding) and keeps the rest of the model out of its module tree.
``accelerator.prepare(stage)`` therefore wraps (DDP / FSDP / DeepSpeed) only the trained part, and
calling the prepared stage runs the whole loss under accelerate's autocast.

    ivideogpt:  tokenizer    L1 reconstruction + VQ losses on context and future frames
                transformer  token cross-entropy (+ symlog reward MSE) on the frozen tokenizer's codes
    vid2world:  diffusion    the loss Vid2World.update trains its backbone with (diffusion forcing, on
                             the clips its memory builds: Vid2World.diffusion_objective)
                reward       symlog reward MSE of the reward head on real transitions

Every stage's ``forward(obs uint8 [B, T, 3, H, W], action [B, T-1, A], reward [B, T-1])``
returns ``(loss, metrics)`` with metrics a dict of scalar tensors.
"""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from worldmodel.interface import SegmentBatch, WorldModel, WorldModelConfigError

# Names users may give in ``freeze:`` besides parameter-name patterns.
FREEZE_ALIASES = {
    "ivideogpt": {
        "context_codebook": ["tokenizer.quantize.*"],
        "future_codebook": ["tokenizer.dynamics_quantize.*"],
        "context_autoencoder": ["tokenizer.encoder.*", "tokenizer.decoder.*", "tokenizer.quant_conv.*",
                                "tokenizer.post_quant_conv.*", "tokenizer.quantize.*"],
        "tokenizer": ["tokenizer.*"],
        "transformer_trunk": ["transformer.llm.*"],
    },
    "vid2world": {
        "backbone": ["backbone.*"],
        "reward_head": ["reward_head.*"],
    },
}


def _as_tensors(metrics: dict) -> dict[str, torch.Tensor]:
    return {k: (v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))) for k, v in metrics.items()}


class Stage(nn.Module):
    """Base class: ``part`` is the model attribute this stage trains (``modules_of`` lists them all
    when the part spans several)."""

    name: str = ""
    part: str = ""

    def __init__(self, model: WorldModel):
        super().__init__()
        for name in self.modules_of(model):
            self.add_module(name, getattr(model, name))
        self._model = [model]  # a list keeps the full model out of this module tree

    def modules_of(self, model: WorldModel) -> tuple[str, ...]:
        """The model attributes this stage trains."""
        return (self.part,)

    @property
    def model(self) -> WorldModel:
        return self._model[0]

    def frames_per_step(self, batch_size: int, segment_length: int) -> int:
        return batch_size * segment_length

    def tokens_per_step(self, batch_size: int, segment_length: int) -> int:
        return 0


# ----- iVideoGPT -----
class TokenizerStage(Stage):
    name = part = "tokenizer"

    def __init__(self, model: WorldModel):
        super().__init__(model)
        if model.tokenizer.discriminator is not None:
            raise WorldModelConfigError(
                "scripts/pretrain.py does not train the GAN tokenizer (tokenizer.gan=true) yet: pretrain "
                "with gan=false, then fine-tune with the GAN through IVideoGPT.update.")
        self.future_frames = int(model.training_cfg["tokenizer_future_frames"])
        self.global_step = 0  # the trainer sets it (GAN start / dead-code bookkeeping)

    def frames_per_step(self, batch_size: int, segment_length: int) -> int:
        T0 = self.model.context_frames
        return batch_size * (T0 + min(segment_length - T0, self.future_frames))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor):
        from worldmodel.ivideogpt.model import frames_to_unit

        T0 = self.model.context_frames
        frames = frames_to_unit(obs)  # [B, T, 3, H, W] in [-1, 1]
        k = frames.shape[1] - T0
        n = min(k, self.future_frames)
        if n < k:  # a random subset of future frames, as IVideoGPT.update does
            pick = torch.randperm(k, device=frames.device)[:n].sort().values + T0
            frames = torch.cat([frames[:, :T0], frames[:, pick]], 1)
        loss, metrics = self.tokenizer(frames, global_step=self.global_step)
        return loss, _as_tensors(metrics)


class TransformerStage(Stage):
    name = part = "transformer"

    def __init__(self, model: WorldModel, train_reward: bool = True):
        super().__init__(model)
        self.train_reward = train_reward  # the tokenizer stays fixed: it runs under no_grad here
        if not train_reward:
            model.transformer.reward_linear.requires_grad_(False)

    def train(self, mode: bool = True) -> "TransformerStage":
        super().train(mode)
        self.model.tokenizer.eval()  # deterministic codes of the frozen tokenizer
        return self

    def tokens_per_step(self, batch_size: int, segment_length: int) -> int:
        return batch_size * self.model.layout.sequence_length(segment_length - self.model.context_frames)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor):
        from worldmodel.ivideogpt.model import frames_to_unit
        from worldmodel.ivideogpt.transformer import symlog

        model, T0 = self.model, self.model.context_frames
        with torch.no_grad():
            ctx_codes, fut_codes = model.tokenize(frames_to_unit(obs))  # [B, T0, Nc], [B, k, Nf]
        # future frame j is produced by action[T0 - 1 + j] with reward[T0 - 1 + j]
        act = action[:, T0 - 1:].float() if model.action_dim > 0 else None
        rew = symlog(reward[:, T0 - 1:].float()) if self.train_reward else None
        ce, reward_mse, metrics = self.transformer.loss(ctx_codes, fut_codes, act, rew)
        loss = ce + model.training_cfg["reward_weight"] * reward_mse
        metrics["loss"] = loss.detach()
        return loss, _as_tensors(metrics)


# ----- Vid2World -----
class DiffusionStage(Stage):
    """Trains what ``Vid2World.update`` trains for its diffusion part, on the same objective: the
    backbone and the memory's modules (the state-key embedding), on the clips the memory builds."""

    name, part = "diffusion", "backbone"

    def modules_of(self, model: WorldModel) -> tuple[str, ...]:
        return model.diffusion_modules

    def forward(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor):
        loss, metrics = self.model.diffusion_objective(SegmentBatch(obs, action, reward))
        return loss, _as_tensors(metrics)


class RewardStage(Stage):
    name, part = "reward", "reward_head"

    def forward(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor):
        from worldmodel.vid2world.model import to_float

        loss, metrics = self.model.reward_loss(to_float(obs), action.float(), reward.float())
        return loss, _as_tensors(metrics)


STAGES: dict[str, dict[str, type[Stage]]] = {
    "ivideogpt": {"tokenizer": TokenizerStage, "transformer": TransformerStage},
    "vid2world": {"diffusion": DiffusionStage, "reward": RewardStage},
}


def stage_names(model: WorldModel) -> list[str]:
    return list(STAGES[model.model_type])


def build_stage(model: WorldModel, name: str, train_reward: bool = True) -> Stage:
    """The stage ``name`` of ``model``; ``train_reward=False`` leaves reward heads untrained
    (action-free corpora carry no rewards)."""
    stages = STAGES.get(model.model_type)
    if stages is None or name not in stages:
        raise WorldModelConfigError(f"{model.model_type} has no stage '{name}'; its stages are "
                                    f"{list(stages or [])}.")
    if name == "transformer":
        return stages[name](model, train_reward=train_reward)
    return stages[name](model)


def freeze(model: WorldModel, patterns: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters named by ``patterns`` (aliases of
    ``FREEZE_ALIASES`` or fnmatch patterns on the model's parameter names, e.g.
    ``transformer.llm.model.layers.0.*``). Returns the frozen names; a pattern that matches
    nothing is an error (a typo would otherwise train what was meant to stay fixed)."""
    aliases = FREEZE_ALIASES.get(model.model_type, {})
    names = [n for n, _ in model.named_parameters()]
    frozen: list[str] = []
    for pattern in patterns:
        globs = aliases.get(pattern, [pattern])
        hits = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        if not hits:
            raise WorldModelConfigError(
                f"freeze pattern '{pattern}' matches no parameter of the {model.model_type} model; use "
                f"one of {sorted(aliases)} or a pattern on parameter names such as '{names[0]}'.")
        frozen += hits
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    # a frozen codebook must not be moved by dead-code re-initialisation either
    for mod_name, module in model.named_modules():
        if hasattr(module, "dead_code_reset") and f"{mod_name}.embedding.weight" in frozen:
            module.dead_code_reset = False
    return sorted(set(frozen))
