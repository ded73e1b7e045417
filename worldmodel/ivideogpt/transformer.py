"""iVideoGPT's transformer: a Llama over compressed video tokens, with actions in and rewards out.

Token layout (the one of thuml/iVideoGPT, so official checkpoints map onto this by key names):

    c0[0:Nc] scf c1[0:Nc] ... c{T0-1}[0:Nc]  sdf f0[0:Nf]  sdf f1[0:Nf]  ...  sdf f{k-1}[0:Nf]
    '------------ prelude (context) ------'  '- frame 0 -'  '- frame 1 -'

* ids: context codes in [0, Vc); future codes shifted to [Vc, Vc + Vf); ``scf = Vc + Vf``
  separates context frames; ``sdf = Vc + Vf + 1`` (the last id) is the slot that opens each
  future frame. Vocabulary = Vc + Vf + 2.
* Future frame j is produced by action a_{T0-1+j}: ``action_linear(a)`` (zero-initialised) is
  added to the embedding of that frame's slot token.
* The hidden state at a frame's last code token feeds ``reward_linear``: the reward (symlog) of
  the step that produced the frame.
* Loss on the Nf code tokens of every future frame only (the slots are deterministic).

Parameter names follow the official ``HeadModelWithAction``: ``llm`` (a ``LlamaForCausalLM``),
``action_linear``, ``reward_linear``.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from worldmodel.ivideogpt.static_kv import OneTokenStep, StaticKVCache, compute_dtype
from worldmodel.ivideogpt.transformer_configs import llama_rope_parameters, transformer_config

NUM_SPECIAL_TOKENS = 2  # scf (context-frame separator) and sdf (future-frame slot)
# Temperatures below this sample greedily: logits / T overflows float32 for a tiny T (a NaN
# softmax that draws code 0 every time), and such a T picks the argmax anyway.
GREEDY_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class TokenLayout:
    """Where every token of a (context, future) video sits in the flat sequence."""

    context_frames: int  # T0
    context_tokens: int  # Nc, codes per context frame (16 x 16 = 256 at 64 px)
    future_tokens: int  # Nf, codes per future frame (4 x 4 = 16)
    context_vocab: int  # Vc
    future_vocab: int  # Vf

    @property
    def scf(self) -> int:
        return self.context_vocab + self.future_vocab

    @property
    def sdf(self) -> int:
        return self.context_vocab + self.future_vocab + 1

    @property
    def vocab_size(self) -> int:
        return self.context_vocab + self.future_vocab + NUM_SPECIAL_TOKENS

    @property
    def prelude_length(self) -> int:
        return (self.context_tokens + 1) * self.context_frames - 1

    @property
    def frame_length(self) -> int:
        """Tokens per future frame: its slot and its codes."""
        return self.future_tokens + 1

    def sequence_length(self, future_frames: int) -> int:
        return self.prelude_length + self.frame_length * future_frames

    def slot_positions(self, future_frames: int, device: torch.device | None = None) -> torch.Tensor:
        return self.prelude_length + self.frame_length * torch.arange(future_frames, device=device)

    def reward_positions(self, future_frames: int, device: torch.device | None = None) -> torch.Tensor:
        """Position of each future frame's last code token."""
        return self.slot_positions(future_frames, device) + self.future_tokens

    def prelude(self, context_codes: torch.Tensor) -> torch.Tensor:
        """context codes long [B, T0, Nc] in [0, Vc) -> ids [B, prelude_length]."""
        B = context_codes.shape[0]
        scf = context_codes.new_full((B, self.context_frames, 1), self.scf)
        return torch.cat([scf, context_codes], 2).flatten(1)[:, 1:]  # drop the leading separator

    def frames(self, future_codes: torch.Tensor) -> torch.Tensor:
        """future codes long [B, k, Nf] in [0, Vf) -> ids [B, k * (Nf + 1)] (slot, codes, ...)."""
        B, k = future_codes.shape[:2]
        sdf = future_codes.new_full((B, k, 1), self.sdf)
        return torch.cat([sdf, future_codes + self.context_vocab], 2).flatten(1)

    def sequence(self, context_codes: torch.Tensor, future_codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.prelude(context_codes), self.frames(future_codes)], 1)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


def sample_codes(logits: torch.Tensor, layout: TokenLayout, temperature: float, top_k: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Sample one future code per row from logits [B, V]; returns long [B] in [0, Vf).

    Only future-code ids can be drawn (the official code samples the whole vocabulary and can
    emit an invalid id). ``temperature < GREEDY_TEMPERATURE`` (0 included) is greedy; ``top_k <= 0``
    disables top-k."""
    future = logits[:, layout.context_vocab:layout.context_vocab + layout.future_vocab]  # [B, Vf]
    return sample_future_codes(future, temperature, top_k, generator)


def sample_future_codes(logits: torch.Tensor, temperature: float, top_k: int,
                        generator: torch.Generator | None) -> torch.Tensor:
    """``sample_codes`` from the future codes' logits alone [B, Vf]; returns long [B] in [0, Vf)."""
    logits = logits.float()
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    # torch.multinomial's own draw for one sample, the exponential race argmax(p / E), E ~ Exp(1):
    # the same codes for the same generator, without its input checks (a host sync on a GPU).
    return (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(-1)


class VideoTransformer(nn.Module):
    """Llama over the token layout above; action-conditioned when ``action_dim > 0``."""

    def __init__(self, layout: TokenLayout, action_dim: int, config: str | dict[str, Any] = "tiny"):
        super().__init__()
        self.layout = layout
        self.action_dim = action_dim
        self.hparams = transformer_config(config)
        hparams = {k: v for k, v in self.hparams.items() if k != "rope_scaling"}
        rope = llama_rope_parameters(self.hparams.get("rope_scaling"))  # YaRN context extension
        llama = LlamaConfig(vocab_size=layout.vocab_size, tie_word_embeddings=False,
                            attn_implementation="sdpa", use_cache=True, **hparams,
                            **({"rope_parameters": rope} if rope else {}))
        self.llm = LlamaForCausalLM(llama)
        hidden = llama.hidden_size
        # Zero init: an action-free checkpoint behaves identically before fine-tuning.
        self.action_linear = nn.Linear(action_dim, hidden) if action_dim > 0 else None
        self.reward_linear = nn.Linear(hidden, 1)
        for head in (self.action_linear, self.reward_linear):
            if head is not None:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        # Static-cache decoders (and their CUDA graphs) kept between rollouts; see static_decoder.
        self._static_pool: dict[tuple, list[OneTokenStep]] = {}

    @property
    def max_positions(self) -> int:
        return self.hparams["max_position_embeddings"]

    # ----- embeddings and the trunk -----
    def embed(self, ids: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] of a sequence that starts at the prelude; action [B, n, A] for its n
        (possibly incomplete last) future frames -> embeddings [B, L, D]."""
        embeds = self.llm.get_input_embeddings()(ids)
        if self.action_linear is not None and action is not None and action.shape[1] > 0:
            slots = self.layout.slot_positions(action.shape[1], ids.device)
            embeds[:, slots] = embeds[:, slots] + self.action_linear(action.to(embeds.dtype))
        return embeds

    def slot_embedding(self, batch: int, action: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The slot token that opens a new future frame, with its action: [B, 1, D]."""
        sdf = torch.full((batch, 1), self.layout.sdf, dtype=torch.long, device=device)
        embeds = self.llm.get_input_embeddings()(sdf)
        if self.action_linear is not None:
            if action is None:
                raise ValueError(f"this transformer is action-conditioned (action_dim={self.action_dim}); "
                                 "pass the action that produces the frame.")
            embeds = embeds + self.action_linear(action.to(embeds.dtype))[:, None]
        return embeds

    def run(self, embeds: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        """Embeddings [B, L, D] (appended after what ``cache`` holds) -> last hidden states [B, L, D]."""
        out = self.llm.model(inputs_embeds=embeds, past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llm.config)

    def static_decoder(self, prelude: torch.Tensor, max_len: int, owner: object,
                       compile: bool = False) -> OneTokenStep:
        """Prefill a static KV cache of ``max_len`` positions with prelude embeddings [B, P, D]
        and return its one-token step (a CUDA graph on GPU), for the imagination of ``owner``.

        Decoders are pooled by batch size and length, so MBPO's rollouts of a fixed batch reuse
        one buffer and one graph; a decoder is handed out again only once its owner (an
        imagination state) is gone, so two live rollouts never share a cache."""
        B = prelude.shape[0]
        compile = compile and prelude.is_cuda  # the CPU path stays eager
        key = (B, max_len, prelude.device, compute_dtype(prelude), self.llm.lm_head.weight.data_ptr(), compile)
        pool = self._static_pool.setdefault(key, [])
        step = next((s for s in pool if s.owner() is None), None)
        if step is None:
            lay = self.layout
            future_rows = slice(lay.context_vocab, lay.context_vocab + lay.future_vocab)  # drawable codes
            step = OneTokenStep(StaticKVCache(self.llm.model, self.llm.lm_head, future_rows, B, max_len), compile)
            pool.append(step)
        step.owner = weakref.ref(owner)
        step.prefill(prelude)
        return step

    def release_static_decoders(self) -> None:
        """Forget the pooled decoders (their buffers are freed once no imagination state holds one)."""
        self._static_pool.clear()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.lm_head(hidden)

    def reward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden [..., D] at a frame's last code token -> reward in symlog space [...]."""
        return self.reward_linear(hidden).squeeze(-1)

    # ----- training -----
    def loss(self, context_codes: torch.Tensor, future_codes: torch.Tensor, action: torch.Tensor | None,
             reward: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Token cross-entropy on future codes and symlog reward regression.

        context_codes [B, T0, Nc], future_codes [B, k, Nf], action [B, k, A] (frame j's action),
        reward [B, k] already in symlog space (or None). Returns (token CE, reward MSE, metrics)."""
        lay = self.layout
        B, k = future_codes.shape[:2]
        ids = lay.sequence(context_codes, future_codes)  # [B, L]
        hidden = self.run(self.embed(ids, action))  # [B, L, D]
        # Position p predicts token p + 1: a frame's codes are predicted from its slot onwards.
        pred = (lay.slot_positions(k, ids.device)[:, None]
                + torch.arange(lay.future_tokens, device=ids.device)).flatten()  # [k * Nf]
        logits = self.logits(hidden[:, pred]).float()  # [B, k * Nf, V]
        target = (future_codes + lay.context_vocab).flatten(1)  # [B, k * Nf]
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        metrics = {"token_ce": ce.detach(),
                   "token_accuracy": (logits.argmax(-1) == target).float().mean()}
        reward_mse = hidden.new_zeros((), dtype=torch.float32)
        if reward is not None:
            pred_reward = self.reward(hidden[:, lay.reward_positions(k, ids.device)]).float()  # [B, k]
            reward_mse = F.mse_loss(pred_reward, reward.float())
            metrics["reward_mse"] = reward_mse.detach()
        return ce, reward_mse, metrics

    # ----- imagination -----
    @torch.no_grad()
    def generate_frame(self, cache: DynamicCache | OneTokenStep, action: torch.Tensor | None, batch: int,
                       temperature: float, top_k: int, generator: torch.Generator | None,
                       prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the next future frame's codes, appending its Nf + 1 tokens to ``cache``.

        ``cache`` is the imagination's static decoder (``static_decoder``, holding everything
        before the new slot), or an empty ``DynamicCache`` with ``prefix`` [B, L, D] holding the
        embeddings of all earlier tokens (re-prefill path).
        Returns codes long [B, Nf] in [0, Vf) and the reward in symlog space [B]."""
        device = self.llm.lm_head.weight.device
        embeds = self.slot_embedding(batch, action, device)  # [B, 1, D]
        embed_tokens = self.llm.get_input_embeddings()
        if isinstance(cache, OneTokenStep):  # static cache: one fixed-shape step per token
            codes = []
            for _ in range(self.layout.future_tokens + 1):
                logits, hidden = cache(embeds, cache.cache.length)  # [B, Vf] (future codes), [B, D]
                cache.cache.length += 1
                if len(codes) == self.layout.future_tokens:
                    break
                code = sample_future_codes(logits, temperature, top_k, generator)
                codes.append(code)
                embeds = embed_tokens(code[:, None] + self.layout.context_vocab)
            return torch.stack(codes, 1), self.reward(hidden)
        if prefix is not None:
            embeds = torch.cat([prefix, embeds], 1)
        codes = []
        hidden = self.run(embeds, cache)[:, -1:]  # [B, 1, D]
        for _ in range(self.layout.future_tokens):
            code = sample_codes(self.logits(hidden[:, -1]), self.layout, temperature, top_k, generator)
            codes.append(code)
            hidden = self.run(embed_tokens(code[:, None] + self.layout.context_vocab), cache)
        return torch.stack(codes, 1), self.reward(hidden[:, -1])
