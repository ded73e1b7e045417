"""Imagination's fast path: the Llama's layers over a preallocated KV cache, replayed as a CUDA graph.

Decoding one token at a time (17 per imagined frame) through ``LlamaModel.forward`` with a
``DynamicCache`` is bound by Python and kernel-launch overhead on a GPU: the ``small``
transformer took 14 ms per token at B=32 on an H100, 2.4 s for a 10-frame rollout, no faster than
recomputing the whole prefix. Here each layer's cache is one fixed buffer [B, kv_heads, L, d]
written in place at the token's position, and attention masks the positions not written yet, so
every one-token step has the same shapes and addresses: on CUDA it is captured once as a graph
and replayed. The modules of the ``LlamaModel`` are called directly (same weights, and training
updates them in place, so a captured graph stays valid); results match ``LlamaModel.forward``
up to float rounding (tests/test_ivideogpt_transformer.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from worldmodel.cuda_graphs import GraphedCall


class StaticKVCache:
    """Keys and values of every layer for ``max_len`` positions, allocated at the first write."""

    def __init__(self, llama: nn.Module, batch: int, max_len: int):
        cfg = llama.config
        self.batch, self.max_len = batch, max_len
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.key_positions: torch.Tensor | None = None  # long [L]: 0 .. max_len - 1
        self.length = 0  # positions written so far (host-side)

    def allocate(self, num_layers: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.batch, self.kv_heads, self.max_len, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.key_positions = torch.arange(self.max_len, device=device)  # [L]


def run_layers(llama: nn.Module, cache: StaticKVCache, embeds: torch.Tensor,
               positions: torch.Tensor, visible: int | None = None) -> torch.Tensor:
    """embeds [B, T, D] at ascending positions long [T] -> final-normed hidden states [B, T, D].

    Writes the T new keys and values into ``cache`` at ``positions``; each query attends to
    the cached positions up to its own. ``visible=None`` reads the whole buffer under a mask:
    fixed shapes and no host synchronisation (CUDA-graph safe). An eager caller that knows how
    many positions are written (``visible``, the new ones included) reads only those, which
    is less work (the CPU path); ``visible == T`` is the prefill, plain causal attention."""
    B, T, _ = embeds.shape
    cos, sin = llama.rotary_emb(embeds, positions[None].expand(B, T))
    if not cache.keys:  # the prefill: keys come out in autocast's dtype when it is on
        kind = embeds.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else embeds.dtype
        cache.allocate(len(llama.layers), dtype, embeds.device)
    span = cache.max_len if visible is None else visible  # key positions the queries read
    allowed = None  # one new token sees every written key; the prefill is causal among its own
    if visible is None or (T > 1 and visible != T):
        allowed = cache.key_positions[None, :span] <= positions[:, None]  # [T, span], True = may attend
    x = embeds
    for i, layer in enumerate(llama.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, heads, T, d]
        k = attn.k_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, kv_heads, T, d]
        v = attn.v_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
        # cos/sin come in the embeddings' dtype (fp32); under autocast keep q, k in bf16.
        q, k = apply_rotary_pos_emb(q, k, cos.to(q.dtype), sin.to(q.dtype))
        cache.keys[i].index_copy_(2, positions, k.to(cache.keys[i].dtype))
        cache.values[i].index_copy_(2, positions, v.to(cache.values[i].dtype))
        keys, values = cache.keys[i][:, :, :span], cache.values[i][:, :, :span]  # [B, kv_heads, span, d]
        out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=allowed,
                                             is_causal=visible == T, scale=attn.scaling,
                                             enable_gqa=attn.num_key_value_groups > 1)  # [B, heads, T, d]
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return llama.norm(x)


class OneTokenStep:
    """``logits, hidden = step(embeds [B, 1, D], position)`` over a ``StaticKVCache``.

    Eager on the CPU, a replayed CUDA graph on a GPU (``GraphedCall``): read the returned
    tensors before the next call."""

    def __init__(self, llama: nn.Module, lm_head: nn.Linear, cache: StaticKVCache, compile: bool = False):
        self.llama, self.lm_head, self.cache = llama, lm_head, cache
        # Compiled code is captured like eager code; the graph's warm-up call triggers compilation.
        self.graphed = GraphedCall(torch.compile(self._forward, dynamic=False) if compile else self._forward)
        self.position: torch.Tensor | None = None  # long [1], refilled each step
        self.owner: Callable[[], object | None] = lambda: None  # weakref to the imagination using it

    def _forward(self, embeds: torch.Tensor, position: torch.Tensor,
                 visible: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = run_layers(self.llama, self.cache, embeds, position, visible)[:, -1]  # [B, D]
        return self.lm_head(hidden), hidden  # [B, V], [B, D]

    def __call__(self, embeds: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The position goes in as a tensor, so one captured graph serves every position.
        if self.position is None:
            self.position = torch.zeros(1, dtype=torch.long, device=embeds.device)
        self.position.fill_(position)
        if embeds.is_cuda:
            return self.graphed(embeds.float(), self.position)
        # eager (CPU): attention reads only the keys written so far, this token's included
        return self._forward(embeds.float(), self.position, visible=position + 1)
