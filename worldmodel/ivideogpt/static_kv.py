"""Imagination's fast path: the Llama's layers over a preallocated KV cache, replayed as a CUDA graph.

Decoding one token at a time (17 per imagined frame) through ``LlamaModel.forward`` with a
``DynamicCache`` is bound by Python and kernel-launch overhead on a GPU: the ``small``
transformer took 14 ms per token at B=32 on an H100, 2.4 s for a 10-frame rollout, no faster than
recomputing the whole prefix. Here each layer's cache is one fixed buffer [B, kv_heads, L, d]
written in place at the token's position, and attention masks the positions not written yet, so
every one-token step has the same shapes and addresses: on CUDA it is captured once as a graph
and replayed. A step is also kept to few ops, which is what a token costs on a CPU: the
projections come from ``StepWeights`` (q|k|v and gate|up as one matrix each, already in the
compute dtype), the norms are ``F.rms_norm``, and the rotary table is computed once per cache.
On the CPU a step goes further (``cpu_step``): keys are stored transposed, [B, kv_heads, d, L],
so a query's scores are one plain matmul over the positions written so far, and each
position's rotary embedding is a d x d matrix, one matmul instead of six elementwise ops.
The modules of the ``LlamaModel`` are otherwise read in place (training updates them; the
weights are re-copied at every prefill). Results match ``LlamaModel.forward`` up to float
rounding (tests/test_ivideogpt.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.cuda_graphs import GraphedCall


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the Llama's matmuls run in for an input like ``x``: autocast's when it is on."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class StepWeights:
    """The Llama's projection weights as imagination reads them, in the compute dtype.

    Per layer: q|k|v stacked into one matrix, o, gate|up stacked, down; and the lm_head's rows
    of the codes that can be drawn. That is fewer, larger matmuls per token, and under CUDA
    autocast no fp32 -> bf16 cast of every weight at every call. ``refresh`` copies the
    parameters in place: training changes them between rollouts, and a captured CUDA graph
    keeps reading the same addresses. (iVideoGPT's Llama has no projection biases.)"""

    def __init__(self, llama: nn.Module, lm_head: nn.Linear, head_rows: slice, dtype: torch.dtype):
        self._copies: list[tuple[torch.Tensor, nn.Linear, slice]] = []  # (destination, source, its rows)
        self.qkv, self.o, self.gate_up, self.down = [], [], [], []
        for layer in llama.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.qkv.append(self._stack([attn.q_proj, attn.k_proj, attn.v_proj], dtype))
            self.o.append(self._stack([attn.o_proj], dtype))
            self.gate_up.append(self._stack([mlp.gate_proj, mlp.up_proj], dtype))
            self.down.append(self._stack([mlp.down_proj], dtype))
        self.head = self._stack([lm_head], dtype, rows=head_rows)  # [V drawable, D]
        self.refresh()

    def _stack(self, linears: list[nn.Linear], dtype: torch.dtype, rows: slice = slice(None)) -> torch.Tensor:
        """An empty matrix for the ``rows`` of the linears' weights stacked, registered for ``refresh``."""
        weights = [linear.weight[rows] for linear in linears]
        out = torch.empty(sum(w.shape[0] for w in weights), weights[0].shape[1], dtype=dtype,
                          device=weights[0].device)
        start = 0
        for linear, w in zip(linears, weights):
            if linear.bias is not None:
                raise ValueError("StepWeights reads bias-free projections; this Llama has biases.")
            self._copies.append((out[start:start + w.shape[0]], linear, rows))
            start += w.shape[0]
        return out

    @torch.no_grad()
    def refresh(self) -> None:
        for destination, linear, rows in self._copies:
            destination.copy_(linear.weight[rows])


class StaticKVCache:
    """Keys and values of every layer for ``max_len`` positions, the rotary table for those
    positions and the step's weights, all in one compute dtype; allocated at the first prefill."""

    def __init__(self, llama: nn.Module, lm_head: nn.Linear, head_rows: slice, batch: int, max_len: int,
                 transposed_keys: bool | None = None):
        """``transposed_keys``: the CPU layout and step; None picks it on the CPU."""
        cfg = llama.config
        self.llama, self.lm_head, self.head_rows = llama, lm_head, head_rows
        self.batch, self.max_len = batch, max_len
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.keys: list[torch.Tensor] = []  # per layer [B, Hkv, L, d]; on the CPU [B, Hkv, d, L]
        self.values: list[torch.Tensor] = []  # per layer [B, Hkv, L, d]
        self.transposed_keys = transposed_keys  # the CPU layout (``cpu_step``); None: decided by ``prepare``
        self.weights: StepWeights | None = None
        self.cos = self.sin = torch.empty(0)  # [max_len, d]: rotary factors of every position
        self.rotation = torch.empty(0)  # CPU: [max_len, d, d], x @ rotation[t] rotates x to position t
        self.key_positions: torch.Tensor | None = None  # long [L]: 0 .. max_len - 1
        self.length = 0  # positions written so far (host-side)

    def prepare(self, embeds: torch.Tensor) -> None:
        """Before a prefill with ``embeds`` [B, P, D]: allocate on first use, else re-copy the weights."""
        if self.weights is not None:
            self.weights.refresh()
            return
        dtype, device = compute_dtype(embeds), embeds.device
        if self.transposed_keys is None:
            self.transposed_keys = device.type == "cpu"
        B, Hkv, L, d = self.batch, self.kv_heads, self.max_len, self.head_dim
        key_shape = (B, Hkv, d, L) if self.transposed_keys else (B, Hkv, L, d)
        self.keys = [torch.zeros(key_shape, dtype=dtype, device=device) for _ in self.llama.layers]
        self.values = [torch.zeros(B, Hkv, L, d, dtype=dtype, device=device) for _ in self.llama.layers]
        self.key_positions = torch.arange(L, device=device)  # [L]
        cos, sin = self.llama.rotary_emb(embeds, self.key_positions[None])  # [1, L, d] (fp32 maths)
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)
        if self.transposed_keys:
            self.rotation = _rotate(torch.eye(d, dtype=dtype, device=device), self.cos[:, None], self.sin[:, None])
        self.weights = StepWeights(self.llama, self.lm_head, self.head_rows, dtype)

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys and values [B, Hkv, T, d] of layer ``layer`` at ``positions`` long [T]."""
        if self.transposed_keys:
            self.keys[layer].index_copy_(3, positions, k.transpose(-1, -2))
        else:
            self.keys[layer].index_copy_(2, positions, k)
        self.values[layer].index_copy_(2, positions, v)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, Hkv, L, d] of layer ``layer`` (views)."""
        keys = self.keys[layer]
        return (keys.transpose(-1, -2) if self.transposed_keys else keys), self.values[layer]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, h, T, d] with cos, sin [T, d] (Llama's rotate-half form)."""
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm`` as one op."""
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


def run_layers(llama: nn.Module, cache: StaticKVCache, embeds: torch.Tensor, positions: torch.Tensor,
               prefill: bool = False) -> torch.Tensor | None:
    """embeds [B, T, D] at ascending positions long [T] -> final-normed hidden states [B, T, D].

    Writes the T new keys and values into ``cache`` (``prepare``d) at ``positions``.
    ``prefill``: the T tokens are the start of the sequence (positions 0 .. T-1), attending
    causally among themselves; the cache is only filled and None returned: the last layer's
    attention and MLP are skipped, since only the hidden states would read them and the
    prefill's are never used. Otherwise each query attends to the whole buffer under a mask of
    the positions written up to its own: fixed shapes and no host synchronisation (the CUDA
    graph's step)."""
    B, T, _ = embeds.shape
    H, Hkv, d, w = cache.heads, cache.kv_heads, cache.head_dim, cache.weights
    cos, sin = cache.cos.index_select(0, positions), cache.sin.index_select(0, positions)  # [T, d]
    allowed = None if prefill else cache.key_positions[None] <= positions[:, None]  # [T, L], True = may attend
    x = embeds
    for i, layer in enumerate(llama.layers):
        attn = layer.self_attn
        qkv = F.linear(_rms_norm(layer.input_layernorm, x), w.qkv[i])  # [B, T, (H + 2 Hkv) d]
        qkv = qkv.view(B, T, H + 2 * Hkv, d).transpose(1, 2)  # [B, H + 2 Hkv, T, d]
        qk = _rotate(qkv[:, :H + Hkv], cos, sin)  # queries and keys rotated in one go
        q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]
        cache.write(i, positions, k, v)
        if prefill and i == len(llama.layers) - 1:
            return None
        if not prefill:
            k, v = cache.read(i)  # [B, Hkv, L, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=prefill,
                                             scale=attn.scaling, enable_gqa=H != Hkv)  # [B, H, T, d]
        x = x + F.linear(out.transpose(1, 2).reshape(B, T, H * d), w.o[i])
        gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, x), w.gate_up[i]).chunk(2, -1)
        x = x + F.linear(layer.mlp.act_fn(gate) * up, w.down[i])
    return _rms_norm(llama.norm, x)


def cpu_step(llama: nn.Module, cache: StaticKVCache, embeds: torch.Tensor, position: int) -> torch.Tensor:
    """``run_layers`` for one token [B, 1, D] at ``position`` in the CPU layout -> final-normed
    hidden state [B, D]. The query reads only the positions written so far (its own included);
    queries are grouped per key head ([B, Hkv, H / Hkv, d]), so grouped-query attention needs
    no copies of the keys."""
    B = embeds.shape[0]
    H, Hkv, d, w = cache.heads, cache.kv_heads, cache.head_dim, cache.weights
    rotation, span = cache.rotation[position], position + 1  # [d, d]
    x = embeds[:, 0]  # [B, D]
    for i, layer in enumerate(llama.layers):
        qkv = F.linear(_rms_norm(layer.input_layernorm, x), w.qkv[i]).view(B, H + 2 * Hkv, d)
        qk = qkv[:, :H + Hkv] @ rotation  # rotated queries and keys
        keys, values = cache.keys[i], cache.values[i]  # [B, Hkv, d, L], [B, Hkv, L, d]
        keys[:, :, :, position] = qk[:, H:]
        values[:, :, position] = qkv[:, H + Hkv:]
        q = qk[:, :H].view(B, Hkv, H // Hkv, d) * layer.self_attn.scaling
        scores = (q @ keys[:, :, :, :span]).softmax(-1)  # [B, Hkv, H / Hkv, span]
        x = x + F.linear((scores @ values[:, :, :span]).view(B, H * d), w.o[i])
        gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, x), w.gate_up[i]).chunk(2, -1)
        x = x + F.linear(layer.mlp.act_fn(gate) * up, w.down[i])
    return _rms_norm(llama.norm, x)


class OneTokenStep:
    """``logits, hidden = step(embeds [B, 1, D], position)`` over a ``StaticKVCache``: the
    logits of the drawable codes only (the lm_head rows ``head_rows``) [B, V'] and the final
    hidden state [B, D].

    Eager on the CPU, a replayed CUDA graph on a GPU (``GraphedCall``): read the returned
    tensors before the next call."""

    def __init__(self, cache: StaticKVCache, compile: bool = False):
        self.llama, self.cache = cache.llama, cache
        # Compiled code is captured like eager code; the graph's warm-up call triggers compilation.
        self.graphed = GraphedCall(torch.compile(self._forward, dynamic=False) if compile else self._forward)
        self.position: torch.Tensor | None = None  # long [1], refilled each step
        self.owner: Callable[[], object | None] = lambda: None  # weakref to the imagination using it

    def prefill(self, embeds: torch.Tensor) -> None:
        """Start the cache over with the prelude's keys and values (embeddings [B, P, D], causal)."""
        self.cache.prepare(embeds)
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        run_layers(self.llama, self.cache, embeds, positions, prefill=True)
        self.cache.length = embeds.shape[1]

    def _forward(self, embeds: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The graphed step: the whole buffer under a mask (fixed shapes)."""
        hidden = run_layers(self.llama, self.cache, embeds, position)[:, -1]  # [B, D]
        return F.linear(hidden, self.cache.weights.head), hidden  # [B, V'], [B, D]

    def __call__(self, embeds: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache.transposed_keys:  # the CPU: eager, reading only the positions written
            hidden = cpu_step(self.llama, self.cache, embeds.float(), position)
            return F.linear(hidden, self.cache.weights.head), hidden
        # The position goes in as a tensor, so one captured graph serves every position.
        if self.position is None:
            self.position = torch.zeros(1, dtype=torch.long, device=embeds.device)
        self.position.fill_(position)
        return self.graphed(embeds.float(), self.position)
