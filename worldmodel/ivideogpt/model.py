"""IVideoGPT: compressive tokenizer + Llama transformer, as a ``WorldModel``.

Training (``update``) follows the official MBPO world model: the tokenizer and the transformer
are separate parts with their own AdamW; the transformer is trained on the current tokenizer's
codes. Imagination (``reset``/``step``) differs from the official code on purpose:

* the transformer's KV cache is carried across frames, so one imagined frame costs Nf + 1 = 17
  new tokens, never a re-run of the 500-token prefix (``reset(..., reprefill=True)`` re-runs it
  as the official code does, for benchmarks and the equivalence test; ``official_loop.py`` runs
  the official rollout itself, generate() and all);
* only the newest frame is decoded, with the context features cached by the tokenizer;
* the model is in eval mode while imagining (no attention dropout while sampling);
* reward r_t is predicted for the frame o_{t+1} produced by a_t and returned by the step that
  takes a_t (the interface's alignment; the official one is a step late);
* only future-code ids are sampled.

Horizon: the transformer is trained on ``max_future_frames`` future frames at most and its
position table is sized for that, so a rollout longer than ``max_future_frames`` is refused
with an error (no sliding window: future tokens are encoded relative to the fixed real context,
so dropping old frames would not give the model anything it was trained on).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from worldmodel.cuda_graphs import GraphedCall
from worldmodel.interface import (WEIGHTS_NAME, SegmentBatch, WorldModel, WorldModelConfigError,
                                  check_step_action, load_weights_checked, merge_config, read_config)
from worldmodel.ivideogpt.quantizer import VectorQuantizer
from worldmodel.ivideogpt.tokenizer import CompressiveTokenizer
from worldmodel.ivideogpt.tokenizer_blocks import conv_compute_dtype
from worldmodel.ivideogpt.tokenizer_configs import tokenizer_config
from worldmodel.ivideogpt.transformer import TokenLayout, VideoTransformer, symexp, symlog
from worldmodel.optim import adamw

log = logging.getLogger(__name__)

PIXEL_MAX = 255.0
DEFAULT_SAMPLING = {"temperature": 1.0, "top_k": 100, "compile": False, "cpu_bf16_decoding": "auto"}
DEFAULT_TRAINING = {
    "lr": 1e-4,  # both parts (official tok_lr = model_lr = 1e-4)
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "grad_clip": 1.0,  # max grad norm; null to disable
    "warmup_steps": 0,  # linear LR warm-up per part; 0 = none
    "reward_weight": 1.0,  # weight of the symlog reward MSE in the transformer loss
    "tokenizer_future_frames": 5,  # future frames per segment the tokenizer trains on (official max_target_frames)
    # train | frozen | auto: frozen for weights loaded by from_pretrained (the transformer was
    # trained on their codes; official MBPO's selected_params), trained in a model built fresh
    "codebooks": "auto",
}
# Parameters that are missing in an action-free / reward-free checkpoint and start at zero.
ACTION_HEAD = "transformer.action_linear."
OPTIONAL_HEADS = (ACTION_HEAD, "transformer.reward_linear.")
# The GAN discriminator: trained only with the tokenizer loss, so a checkpoint with one loads into a
# model without (it is dropped) and one without loads into a GAN model (it starts fresh).
DISCRIMINATOR = "tokenizer.discriminator."


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where a bf16
    convolution costs about half an fp32 one; elsewhere it is emulated and slower."""
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def frames_to_unit(obs: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float in [-1, 1]."""
    return obs.float() / (PIXEL_MAX / 2) - 1.0


def unit_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1.0) * (PIXEL_MAX / 2)).round().to(torch.uint8)


@dataclass
class ImagineState:
    """Opaque imagination state. ``step`` advances it in place (the KV cache grows), so a state
    cannot be branched: call ``reset`` again for another rollout from the same context. The state
    holds the weights' copies of its ``reset`` (the transformer's step weights, the context
    features): after an ``update``, reset again rather than stepping an older state."""

    context: Any  # the tokenizer's ContextCache
    cache: Any  # OneTokenStep over a static KV cache (cached path) or None (re-prefill path)
    ids: torch.Tensor  # long [B, L]: every token so far (re-prefill path and bookkeeping)
    actions: torch.Tensor  # float [B, n, A]: the actions of the n imagined frames
    generator: torch.Generator | None
    future_frames: int = 0


class IVideoGPT(WorldModel):
    model_type = "ivideogpt"
    parts = ("tokenizer", "transformer")
    # A checkpoint keeps its sizes, codebooks and context length; a run sets these (the
    # tokenizer's loss terms included: a GAN or perceptual loss can be switched on or off).
    run_settings = ("max_future_frames", "sampling", "training", "transformer.attention_dropout",
                    "transformer.rope_scaling",
                    *(f"tokenizer.{key}" for key in ("commit_beta", "rec_weight", "perceptual_weight",
                                                     "perceptual_weights_path", "perceptual_channels", "gan",
                                                     "disc_start", "disc_weight", "disc_depth", "disc_hidden_channels",
                                                     "adaptive_weight_max", "dead_code_reset", "dead_code_steps",
                                                     "cross_attn_dropout")))

    @classmethod
    def run_overrides(cls, model_cfg: Mapping[str, Any]) -> dict:
        """As the base; a null ``transformer.rope_scaling`` keeps the checkpoint's (a YaRN-extended
        checkpoint stays extended), while a given one extends a loaded checkpoint's context."""
        out = super().run_overrides(model_cfg)
        if out.get("transformer", {}).get("rope_scaling", 0) is None:
            del out["transformer"]["rope_scaling"]
            if not out["transformer"]:
                del out["transformer"]
        return out

    def __init__(self, image_size: int, action_dim: int, context_frames: int = 2,
                 tokenizer: dict[str, Any] | str = "tiny", transformer: dict[str, Any] | str = "tiny",
                 max_future_frames: int = 10, sampling: dict[str, Any] | None = None,
                 training: dict[str, Any] | None = None):
        super().__init__()
        for name, value, low in (("image_size", image_size, 1), ("action_dim", action_dim, 0),
                                 ("context_frames", context_frames, 1), ("max_future_frames", max_future_frames, 1)):
            if not _integer(value) or value < low:
                raise WorldModelConfigError(f"{name} must be an integer >= {low}; got {value!r}.")
        image_size, action_dim = int(image_size), int(action_dim)
        context_frames, max_future_frames = int(context_frames), int(max_future_frames)
        self.image_size, self.action_dim, self.context_frames = image_size, action_dim, context_frames
        self.max_future_frames = max_future_frames
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        self.training_cfg = {**DEFAULT_TRAINING, **(training or {})}
        for name, given, known in (("sampling", self.sampling, DEFAULT_SAMPLING),
                                   ("training", self.training_cfg, DEFAULT_TRAINING)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise WorldModelConfigError(f"unknown {name} keys {unknown}; valid: {sorted(known)}.")
        _check_settings(self.sampling, self.training_cfg)

        self.tokenizer = CompressiveTokenizer(_resolve_tokenizer(tokenizer, image_size, context_frames))
        tok = self.tokenizer
        self.layout = TokenLayout(context_frames=context_frames,
                                  context_tokens=math.prod(tok.context_token_shape),
                                  future_tokens=math.prod(tok.future_token_shape),
                                  context_vocab=tok.context_vocab_size, future_vocab=tok.future_vocab_size)
        self.transformer = VideoTransformer(self.layout, action_dim, transformer)
        needed = self.layout.sequence_length(max_future_frames)
        if needed > self.transformer.max_positions:
            raise WorldModelConfigError(
                f"{context_frames} context + {max_future_frames} future frames need {needed} tokens but "
                f"the transformer has max_position_embeddings={self.transformer.max_positions}: lower "
                "max_future_frames or raise transformer.max_position_embeddings.")

        if self.training_cfg["codebooks"] == "frozen":
            self._freeze_codebooks()
        self._build_optimizers()
        # Per-step frame decoding, a CUDA graph per batch size on GPU (worldmodel/cuda_graphs.py).
        self._frame_decoders: dict[tuple, GraphedCall] = {}

    def _freeze_codebooks(self) -> None:
        """Keep both codebooks as they are: no gradient steps and no dead-code re-initialisation
        (either would renumber the codes the transformer has learnt)."""
        for quantizer in self._quantizers().values():
            quantizer.embedding.weight.requires_grad_(False)
            quantizer.dead_code_reset = False

    def _build_optimizers(self) -> None:
        """An AdamW (and warm-up schedule) per part over its trainable parameters; fresh counters."""
        tcfg = self.training_cfg
        self.optimizers = {
            "tokenizer": self._adamw(self.tokenizer.generator_parameters()),
            "transformer": self._adamw(self.transformer.parameters()),
        }
        if self.tokenizer.discriminator is not None:  # GAN tokenizer: trained with the tokenizer part
            self.optimizers["discriminator"] = self._adamw(self.tokenizer.discriminator_parameters())
        self.schedulers = {}
        if tcfg["warmup_steps"] > 0:
            warm = tcfg["warmup_steps"]
            self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / warm))
                               for k, o in self.optimizers.items()}
        self.counters = {f"{kind}_{part}": 0 for kind in ("updates", "skipped") for part in self.optimizers}

    def _loaded(self) -> "IVideoGPT":
        """After from_pretrained: ``training.codebooks=auto`` keeps the loaded codebooks."""
        if self.training_cfg["codebooks"] == "auto":
            self._freeze_codebooks()
            self._build_optimizers()
        return self

    def _decode_newest(self, codes: torch.Tensor, context_kv: tuple[torch.Tensor, ...]) -> torch.Tensor:
        key = (codes.shape[0], codes.device, self.tokenizer.post_quant_linear.weight.data_ptr())
        if key not in self._frame_decoders:
            self._frame_decoders[key] = GraphedCall(self.tokenizer.decode_newest)
        return self._frame_decoders[key](codes, *context_kv)

    def release_imagination_buffers(self) -> None:
        """Drop what imagination keeps between rollouts: the pooled static KV caches with their
        weight copies and CUDA graphs, and the graphed frame decoders. They are rebuilt at the
        next use; e.g. to free GPU memory between phases, or to measure one rollout's memory alone."""
        self.transformer.release_static_decoders()
        self._frame_decoders.clear()

    def _adamw(self, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        t = self.training_cfg
        return adamw(params, self, lr=t["lr"], betas=t["betas"], eps=t["eps"], weight_decay=t["weight_decay"])

    @property
    def device(self) -> torch.device:
        return self.transformer.llm.lm_head.weight.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, nothing elsewhere."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _decoding_conv_dtype(self) -> torch.dtype | None:
        """The dtype of imagination's decoder convolutions: bf16 on a CPU when
        ``sampling.cpu_bf16_decoding`` allows (``auto``: when the CPU multiplies bf16 natively);
        None (as the model is) elsewhere: CUDA decodes under autocast."""
        wanted = self.sampling["cpu_bf16_decoding"]
        if self.device.type == "cpu" and (wanted is True or (wanted == "auto" and cpu_has_native_bf16())):
            return torch.bfloat16
        return None

    def _decoding_precision(self) -> contextlib.AbstractContextManager:
        return conv_compute_dtype(self._decoding_conv_dtype())

    # ----- persistence -----
    def get_config(self) -> dict:
        return {"image_size": self.image_size, "action_dim": self.action_dim,
                "context_frames": self.context_frames, "tokenizer": copy.deepcopy(self.tokenizer.config),
                "transformer": dict(self.transformer.hparams), "max_future_frames": self.max_future_frames,
                "sampling": dict(self.sampling), "training": copy.deepcopy(self.training_cfg)}

    @classmethod
    def from_config(cls, config: dict) -> "IVideoGPT":
        config = dict(config)
        for key in ("image_size", "action_dim"):
            if config.get(key) is None:
                raise WorldModelConfigError(
                    f"ivideogpt config needs '{key}' (the training loop fills it from the env).")
        known = {"image_size", "action_dim", "context_frames", "tokenizer", "transformer",
                 "max_future_frames", "sampling", "training"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise WorldModelConfigError(f"unknown ivideogpt config keys {unknown}; valid: {sorted(known)}.")
        return cls(**config)

    @classmethod
    def from_pretrained(cls, directory, **overrides: Any) -> "IVideoGPT":
        """As the base class, but an action-free (or reward-free) checkpoint loads into an
        action-conditioned model: the missing ``action_linear`` / ``reward_linear`` start at zero.
        An official thuml/iVideoGPT directory (tokenizer/ + transformer/) is imported on the fly
        (worldmodel/ivideogpt/official.py); ``overrides`` then take ``action_dim``, ``image_size``,
        ``context_frames`` and other config entries."""
        from safetensors import safe_open

        from worldmodel.ivideogpt import official

        if official.looks_official(directory):
            model, report = official.import_official(directory, **overrides)
            log.warning("%s", report.summary())
            return model._loaded()
        config = read_config(directory)
        model_type = config.pop("model_type")
        if model_type != cls.model_type:
            raise WorldModelConfigError(f"{directory} holds a '{model_type}' world model, not '{cls.model_type}'.")
        model = cls.from_config(merge_config(config, overrides))
        path = f"{directory}/{WEIGHTS_NAME}"
        try:
            with safe_open(path, framework="pt") as f:
                keys = set(f.keys())
        except Exception:  # a missing / corrupt file gets load_weights_checked's clear error
            keys = None
        own = set(model.state_dict())
        missing = sorted(own - keys) if keys is not None else []
        unexpected = sorted(keys - own) if keys is not None else []
        optional = [k for k in missing if k.startswith(OPTIONAL_HEADS)]
        fresh_discriminator = [k for k in missing if k.startswith(DISCRIMINATOR)]
        dropped = [k for k in unexpected if k.startswith(DISCRIMINATOR)]
        # An action-free model asked of an action-conditioned checkpoint (e.g. to go on pretraining on
        # action-free video) leaves its action head out, as scripts/import_ivideogpt.py does.
        action_head = [k for k in unexpected if k.startswith(ACTION_HEAD) and model.action_dim == 0]
        lenient = (len(optional) + len(fresh_discriminator) == len(missing)
                   and len(dropped) + len(action_head) == len(unexpected))
        load_weights_checked(model, path, strict=not (lenient and (missing or unexpected)))
        if optional:
            log.warning("%s has no %s: they start at zero (e.g. an action-free checkpoint loaded "
                        "into an action-conditioned model).", directory, optional)
        if action_head:
            log.warning("%s: the checkpoint's action head %s is not loaded (an action-free model, "
                        "action_dim=0, was asked for).", directory, action_head)
        if fresh_discriminator or dropped:
            log.warning("%s: the GAN discriminator %s (tokenizer.gan=%s).", directory,
                        "starts fresh" if fresh_discriminator else "is not loaded", model.tokenizer.config["gan"])
        return model._loaded()

    # ----- training checkpoints -----
    def _quantizers(self) -> dict[str, VectorQuantizer]:
        return {"quantize": self.tokenizer.quantize, "dynamics_quantize": self.tokenizer.dynamics_quantize}

    def training_statistics(self) -> dict[str, torch.Tensor]:
        """Both codebooks' usage counters (``tokenizer.<quantizer>.<counter>``)."""
        return {f"tokenizer.{name}.{key}": value for name, q in self._quantizers().items()
                for key, value in q.usage_state().items()}

    def load_training_statistics(self, statistics: dict[str, torch.Tensor]) -> None:
        for name, q in self._quantizers().items():
            prefix = f"tokenizer.{name}."
            state = {k[len(prefix):]: v for k, v in statistics.items() if k.startswith(prefix)}
            if state:
                q.load_usage_state(state)

    # ----- what a run may ask of the model -----
    def check_segment_length(self, length: int) -> None:
        k = length - self.context_frames
        if not 1 <= k <= self.max_future_frames:
            raise WorldModelConfigError(
                f"segments of {length} frames give {k} future frames after {self.context_frames} context "
                f"frames; need 1..{self.max_future_frames} (max_future_frames): segment_length between "
                f"{self.context_frames + 1} and {self.context_frames + self.max_future_frames}.")

    @property
    def max_horizon(self) -> int:
        return self.max_future_frames

    def check_horizon(self, horizon: int) -> None:
        if horizon > self.max_future_frames:  # named by its config key
            raise WorldModelConfigError(
                f"a rollout of {horizon} steps is longer than max_future_frames={self.max_future_frames} (the "
                "transformer's trained length); shorten it, or rebuild with a larger max_future_frames.")
        super().check_horizon(horizon)

    # ----- training -----
    def _check_batch(self, batch: SegmentBatch) -> None:
        obs, act, rew = batch.obs, batch.action, batch.reward
        if obs.dtype != torch.uint8 or obs.ndim != 5 or obs.shape[2:] != (3, self.image_size, self.image_size):
            raise ValueError(f"segment obs must be uint8 [B, T, 3, {self.image_size}, {self.image_size}]; "
                             f"got {obs.dtype} {tuple(obs.shape)}.")
        B, T = obs.shape[:2]
        self.check_segment_length(T)
        want_a = (B, T - 1, self.action_dim)
        if self.action_dim > 0 and (act is None or tuple(act.shape) != want_a):
            raise ValueError(f"segment action must be [B, T-1, A] = {want_a}; got "
                             f"{None if act is None else tuple(act.shape)}.")
        if rew is None or tuple(rew.shape) != (B, T - 1):
            raise ValueError(f"segment reward must be [B, T-1] = {(B, T - 1)}; got "
                             f"{None if rew is None else tuple(rew.shape)}.")

    def update(self, batch: SegmentBatch, parts: tuple[str, ...] | None = None) -> dict[str, float]:
        parts = self.parts if parts is None else tuple(parts)
        bad = sorted(set(parts) - set(self.parts))
        if bad:
            raise ValueError(f"unknown parts {bad}; ivideogpt trains {self.parts}.")
        self._check_batch(batch)
        batch = batch.to(self.device)
        frames = frames_to_unit(batch.obs)  # [B, T, 3, H, W] in [-1, 1], converted once
        self.train()
        metrics: dict[str, float] = {}
        if "tokenizer" in parts:
            metrics.update(self._update_tokenizer(frames))
        if "transformer" in parts:
            metrics.update(self._update_transformer(frames, batch.action, batch.reward))
        return metrics

    def _step(self, part: str, loss: torch.Tensor, params: list[nn.Parameter]) -> dict[str, float]:
        return self.optimizer_step(part, loss, params, self.training_cfg["grad_clip"])

    def _update_tokenizer(self, frames: torch.Tensor) -> dict[str, float]:
        T0 = self.context_frames
        k = frames.shape[1] - T0
        n = min(k, self.training_cfg["tokenizer_future_frames"])
        if n < k:  # a random subset of future frames (each is conditioned on the context only)
            pick = torch.randperm(k, device=frames.device)[:n].sort().values + T0
            frames = torch.cat([frames[:, :T0], frames[:, pick]], 1)
        step = self.counters["updates_tokenizer"]  # the generator's and the discriminator's step
        with self._autocast():
            loss, tok_metrics = self.tokenizer(frames, global_step=step)
        out = self._step("tokenizer", loss, [p for g in self.optimizers["tokenizer"].param_groups
                                              for p in g["params"]])
        out.update({f"tokenizer/{k}": float(v) for k, v in tok_metrics.items()})
        # Like the official, the discriminator takes no steps before disc_start (a zero loss would
        # still decay its weights and age AdamW's moments).
        if "discriminator" in self.optimizers and step >= self.tokenizer.config["disc_start"]:
            with self._autocast():
                d_loss, d_metrics = self.tokenizer.discriminator_loss(frames, self.tokenizer.last_recon, step)
            out.update(self._step("discriminator", d_loss, list(self.tokenizer.discriminator_parameters())))
            out.update({f"tokenizer/{k}": float(v) for k, v in d_metrics.items()})
        return out

    @torch.no_grad()
    def tokenize(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, T0 + k, 3, H, W] in [-1, 1] -> (context codes [B, T0, Nc], future codes [B, k, Nf])."""
        T0 = self.context_frames
        ctx_codes, cache = self.tokenizer.encode_context(frames[:, :T0])
        fut_codes = self.tokenizer.encode_future(frames[:, T0:], cache)
        return ctx_codes.flatten(2), fut_codes.flatten(2)

    def _update_transformer(self, frames: torch.Tensor, action: torch.Tensor,
                            reward: torch.Tensor) -> dict[str, float]:
        T0 = self.context_frames
        was_training = self.tokenizer.training
        self.tokenizer.eval()  # codes of the current tokenizer, deterministic
        with self._autocast():
            ctx_codes, fut_codes = self.tokenize(frames)
        self.tokenizer.train(was_training)
        # Future frame j (segment index T0 + j) is produced by action[T0 - 1 + j] with reward[T0 - 1 + j].
        act = action[:, T0 - 1:].float() if self.action_dim > 0 else None  # [B, k, A]
        rew = symlog(reward[:, T0 - 1:].float())  # [B, k]
        with self._autocast():
            ce, reward_mse, m = self.transformer.loss(ctx_codes, fut_codes, act, rew)
            loss = ce + self.training_cfg["reward_weight"] * reward_mse
        out = self._step("transformer", loss, list(self.transformer.parameters()))
        out["transformer/loss"] = float(loss.detach())
        out.update({f"transformer/{k}": float(v) for k, v in m.items()})
        return out

    # ----- step-level imagination -----
    @contextlib.contextmanager
    def _imagining(self) -> Iterator[None]:
        """No grad, eval mode (no dropout while sampling), autocast on CUDA; restores the mode.
        A model already in eval mode (``rollout`` sets it once) is left alone: switching the
        mode walks every module, about 0.5 ms for the tiny model, once per step."""
        with torch.no_grad(), self.sampling_mode(), self._autocast():
            yield

    def reset(self, context_obs: torch.Tensor, generator: torch.Generator | None = None, *,
              reprefill: bool = False) -> ImagineState:
        """Start imagination from real frames uint8 [B, T, 3, H, W], T >= context_frames (the
        last ``context_frames`` are used). ``generator`` seeds the sampling (same seed, same
        frames). ``reprefill=True`` recomputes the whole sequence for every frame, as the
        official code does: slower, same result; for benchmarks and tests."""
        T0, S = self.context_frames, self.image_size
        if (not isinstance(context_obs, torch.Tensor) or context_obs.dtype != torch.uint8 or context_obs.ndim != 5
                or context_obs.shape[0] < 1 or context_obs.shape[1] < T0 or context_obs.shape[2:] != (3, S, S)):
            got = (f"{context_obs.dtype} {tuple(context_obs.shape)}" if isinstance(context_obs, torch.Tensor)
                   else type(context_obs).__name__)
            raise ValueError(f"context_obs must be a uint8 tensor [B>=1, T>={T0}, 3, {S}, {S}]; got {got}.")
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"the generator is on {generator.device} but the model is on {self.device}: "
                             f"make it with torch.Generator(device='{self.device.type}').")
        with self._imagining():
            frames = frames_to_unit(context_obs[:, -T0:].to(self.device))
            ctx_codes, context = self.tokenizer.encode_context(frames)  # [B, T0, hc, wc]
            with self._decoding_precision():
                self.tokenizer.decoder_kv(context)  # computed once, cached in ``context``
            ids = self.layout.prelude(ctx_codes.flatten(2))  # [B, prelude]
            B = context_obs.shape[0]
            actions = torch.zeros(B, 0, self.action_dim, device=self.device)
            state = ImagineState(context=context, cache=None, ids=ids, actions=actions, generator=generator)
            if not reprefill:  # prefill once; every later token is one fixed-shape step
                max_len = self.layout.sequence_length(self.max_future_frames)
                state.cache = self.transformer.static_decoder(self.transformer.embed(ids), max_len, owner=state,
                                                              compile=self.sampling["compile"])
        return state

    def step(self, state: ImagineState, action: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, ImagineState]:
        """action float [B, A] (a_t) -> (o_{t+1} uint8 [B, 3, H, W], r_t float [B], state).
        An action-free model (action_dim 0) takes None or an empty [B, 0] action. A step that
        fails part-way (e.g. out of memory) leaves ``state`` as it was."""
        if not isinstance(state, ImagineState):
            raise ValueError(f"step needs the state that reset() returned; got {type(state).__name__}.")
        B = state.ids.shape[0]
        if state.future_frames >= self.max_future_frames:
            raise ValueError(f"imagination is limited to max_future_frames={self.max_future_frames} steps "
                             "after reset (the transformer's trained length); reset again from real "
                             "frames, or rebuild with a larger max_future_frames.")
        if self.action_dim > 0:
            check_step_action(action, B, self.action_dim)
            action = action.to(self.device, torch.float32)
        elif action is not None and (not isinstance(action, torch.Tensor) or action.numel() > 0):
            raise WorldModelConfigError(
                "this model is action-free (action_dim=0) and would ignore the action it was given; load it "
                "with action_dim=A (e.g. from_pretrained(dir, action_dim=4)) to condition on actions.")
        else:
            action = None
        s = self.sampling
        tf = self.transformer
        written = None if state.cache is None else state.cache.cache.length
        try:
            with self._imagining():
                prefix, cache = None, state.cache
                if cache is None:  # re-prefill: a fresh cache and the whole sequence so far
                    cache = tf.new_cache()
                    prefix = tf.embed(state.ids, state.actions)
                codes, reward = tf.generate_frame(cache, action, B, s["temperature"], s["top_k"],
                                                  state.generator, prefix=prefix)  # [B, Nf], [B]
                with self._decoding_precision():
                    frame = self._decode_newest(codes.view(B, *self.tokenizer.future_token_shape),
                                                self.tokenizer.decoder_kv(state.context))  # [B, 3, H, W]
        except BaseException:
            if written is not None:  # forget the frame's tokens; the next step writes over them
                state.cache.cache.length = written
            raise
        state.ids = torch.cat([state.ids, self.layout.frames(codes[:, None])], 1)
        if action is not None:
            state.actions = torch.cat([state.actions, action[:, None]], 1)
        state.future_frames += 1
        return unit_to_frames(frame), symexp(reward.float()), state


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_settings(sampling: dict[str, Any], training: dict[str, Any]) -> None:
    """Refuse sampling / training settings of the wrong kind when the model is built, not at the
    first rollout or update."""
    problems = []
    if not _number(sampling["temperature"]):
        problems.append(f"sampling.temperature must be a number (<= 0: greedy); got {sampling['temperature']!r}")
    if not _integer(sampling["top_k"]):
        problems.append(f"sampling.top_k must be an integer (<= 0: whole codebook); got {sampling['top_k']!r}")
    if not isinstance(sampling["compile"], bool):
        problems.append(f"sampling.compile must be true or false; got {sampling['compile']!r}")
    if sampling["cpu_bf16_decoding"] not in ("auto", True, False):
        problems.append(f"sampling.cpu_bf16_decoding must be auto, true or false; "
                        f"got {sampling['cpu_bf16_decoding']!r}")
    for key in ("lr", "weight_decay", "eps", "reward_weight"):
        if not _number(training[key]) or training[key] < 0:
            problems.append(f"training.{key} must be a number >= 0; got {training[key]!r}")
    betas = training["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in betas):
        problems.append(f"training.betas must be two numbers in [0, 1); got {betas!r}")
    if training["grad_clip"] is not None and (not _number(training["grad_clip"]) or training["grad_clip"] < 0):
        problems.append(f"training.grad_clip must be a number >= 0 (0 or null: no clipping); "
                        f"got {training['grad_clip']!r}")
    for key, low in (("warmup_steps", 0), ("tokenizer_future_frames", 1)):
        if not _integer(training[key]) or training[key] < low:
            problems.append(f"training.{key} must be an integer >= {low}; got {training[key]!r}")
    if training["codebooks"] not in ("auto", "train", "frozen"):
        problems.append(f"training.codebooks must be auto, train or frozen; got {training['codebooks']!r}")
    if problems:
        raise WorldModelConfigError("; ".join(problems) + ".")


def _resolve_tokenizer(spec: dict[str, Any] | str, image_size: int, context_frames: int) -> dict[str, Any]:
    """A preset name, ``{"size": name, **overrides}`` or a full tokenizer config -> a full config
    whose image size and context length are the model's."""
    spec = {"size": spec} if isinstance(spec, str) else dict(spec)
    size = spec.pop("size", None)
    spec.update(image_size=image_size, context_frames=context_frames)
    if size is not None:
        return tokenizer_config(size, **spec)
    base = tokenizer_config("paper64")
    missing = sorted(set(base) - set(spec))
    if missing:
        raise WorldModelConfigError(f"tokenizer config lacks {missing}: give a 'size' preset or every key.")
    return tokenizer_config("paper64", **spec)
