"""Encoder / decoder stacks of the compressive tokenizer, built from diffusers blocks.

Module names and parameter shapes follow the official iVideoGPT code
(``ivideogpt/vq_model/vae.py`` and ``conditional_vae.py``), so official checkpoints map onto
these modules key for key:

    Encoder            <- vae.Encoder             conv_in, down_blocks.*, mid_block, conv_norm_out, conv_out
    Decoder            <- vae.Decoder             conv_in, mid_block, up_blocks.*, conv_norm_out, conv_out
    CrossAttentionBlock <- conditional_vae.CrossAttentionBlock   att (nn.MultiheadAttention), kv_norm,
                                                  q_norm, kv_pos_emb, q_pos_emb
    ConditionalEncoder <- conditional_vae.ConditionalEncoder     Encoder + cross_att_blocks.*
    ConditionalDecoder <- conditional_vae.ConditionalDecoder     Decoder + cross_att_blocks.*

The decoders' upsamplers (``up_blocks.*.upsamplers.0.conv``) hold the official weights too, but
compute nearest-2x-then-conv as one transposed convolution (``NearestUpsampleConv``). Likewise the
cross-attention keeps ``nn.MultiheadAttention``'s parameters but writes its maths out, split into
the context's keys and values (``context_kv``, computed once per imagined rollout) and the rest.

The stacks' convolutions can multiply in bf16 with fp32 activations in and out
(``conv_compute_dtype``): imagination decodes that way on CPUs that multiply bf16 natively, where
a convolution then costs about half as much; the norms, attention and residual sums stay fp32.
diffusers' resnets run a leaner forward of the same maths (``ResidualBlock``).

Context features are passed batch-first as ``[B, t, C, h, w]`` (t context frames) while the
frames being encoded / decoded come as ``[B*T, C, H, W]`` (T frames per batch entry). The
cross-attention folds the T frames into the query sequence instead of copying the context T
times (the official repeats it): queries never attend to each other, so the result is the same
and every frame depends on the context only.
"""
from __future__ import annotations

import contextlib
import itertools
from contextvars import ContextVar
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers.models.activations import get_activation
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import Tensor, nn

RESNET_EPS = 1e-6  # diffusers' VAE value, used by the official

_CONV_COMPUTE_DTYPE: ContextVar[torch.dtype | None] = ContextVar("conv_compute_dtype", default=None)


@contextlib.contextmanager
def conv_compute_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, the tokenizer's convolutions (``MixedPrecisionConv2d``, ``NearestUpsampleConv``)
    cast their input and weights to ``dtype``, multiply, and hand back the input's dtype. ``None``:
    plain convolutions. Unlike CPU autocast, nothing else changes dtype (a bf16 GroupNorm on a
    CPU is several times slower than an fp32 one)."""
    token = _CONV_COMPUTE_DTYPE.set(dtype)
    try:
        yield
    finally:
        _CONV_COMPUTE_DTYPE.reset(token)


def _in_compute_dtype(conv: Callable[..., Tensor], x: Tensor, *params: Tensor | None) -> Tensor:
    """``conv(x, *params)`` in the dtype of ``conv_compute_dtype``, handing back x's dtype; a plain
    call outside it (so autocast, on CUDA, still decides)."""
    dtype = _CONV_COMPUTE_DTYPE.get()
    if dtype is None or dtype == x.dtype:
        return conv(x, *params)
    return conv(x.to(dtype), *(None if p is None else p.to(dtype) for p in params)).to(x.dtype)


class MixedPrecisionConv2d(nn.Conv2d):
    """``nn.Conv2d`` that follows ``conv_compute_dtype``; same parameters and state dict."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _in_compute_dtype(super()._conv_forward, x, weight, bias)


class ResidualBlock(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` as the tokenizer builds it (no time embedding, no resampling
    inside the block), same parameters and maths. Its forward sums the residual in place and
    skips the division by an output scale of 1: diffusers' general forward makes two more full
    passes over the activations, about 3% of decoding a frame on a CPU."""

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous() if self.training else x)  # diffusers' DDP stride fix
        # In place into conv2's fresh output (its backward does not read it), unless autocast
        # made it bf16 next to an fp32 input: then the sum is fp32, as in diffusers.
        h = h.add_(x) if h.dtype == x.dtype else x + h
        return h if self.output_scale_factor == 1 else h / self.output_scale_factor


def use_lean_blocks(module: nn.Module) -> None:
    """In place, in ``module`` (built from diffusers' blocks): every ``ResnetBlock2D`` becomes a
    ``ResidualBlock`` and every plain ``nn.Conv2d`` a ``MixedPrecisionConv2d``. The subclasses add
    no state, so parameters, hooks and checkpoints are untouched."""
    for child in module.modules():
        if type(child) is ResnetBlock2D:
            if child.time_emb_proj is not None or child.upsample is not None or child.downsample is not None:
                raise ValueError("ResidualBlock covers resnets without time embedding or resampling.")
            child.__class__ = ResidualBlock
        elif type(child) is nn.Conv2d:
            child.__class__ = MixedPrecisionConv2d


def _mid_block(channels: int, groups: int, act_fn: str, attention: bool) -> UNetMidBlock2D:
    return UNetMidBlock2D(in_channels=channels, temb_channels=None, resnet_eps=RESNET_EPS,
                          resnet_act_fn=act_fn, output_scale_factor=1, resnet_time_scale_shift="default",
                          attention_head_dim=channels, resnet_groups=groups, add_attention=attention)


class NearestUpsampleConv(nn.Module):
    """2x nearest-neighbour upsampling, then a 3x3 convolution: diffusers' ``Upsample2D``
    (``use_conv=True``, the decoders' upsampler) computed as one stride-2 transposed convolution.

    Output pixel (2i + a, 2j + b) of the 3x3 convolution over the upsampled map reads a 2x2 patch
    of the input, several taps landing on the same input pixel. Summing those taps gives a 4x4
    stride-2 kernel: 16 multiply-adds per input pixel and channel pair instead of 36, and no
    upsampled copy of the input. The result equals ``Upsample2D``'s up to float rounding; the
    weights are the same ``conv`` tensors, so checkpoints are unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)  # the upsampled map's conv

    @staticmethod
    def _fold(kernel: Tensor, dim: int) -> Tensor:
        """The 3 taps of ``kernel`` along ``dim`` -> the 4 taps of the stride-2 transposed kernel:
        an even output row reads input rows i-1 (tap 0) and i (taps 1+2); an odd one reads rows i
        (taps 0+1) and i+1 (tap 2). Plain additions, so autocast leaves them in the weights' dtype."""
        a, b, c = kernel.unbind(dim)
        return torch.stack([c, b + c, a + b, a], dim)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, C, h, w] -> [N, C, 2h, 2w]."""
        kernel = self._fold(self._fold(self.conv.weight, 2), 3).transpose(0, 1)  # [C_in, C_out, 4, 4]
        return _in_compute_dtype(partial(F.conv_transpose2d, stride=2, padding=1), x, kernel, self.conv.bias)


class Encoder(nn.Module):
    """Image [N, 3, H, W] -> latent [N, latent, H/2^(L-1), W/2^(L-1)] (+ every level's features)."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: list[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool):
        super().__init__()
        chans = block_out_channels
        self.conv_in = nn.Conv2d(in_channels, chans[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, c_out in enumerate(chans):
            c_in = chans[max(i - 1, 0)]
            self.down_blocks.append(get_down_block(
                "DownEncoderBlock2D", num_layers=layers_per_block, in_channels=c_in, out_channels=c_out,
                add_downsample=i < len(chans) - 1, resnet_eps=RESNET_EPS, downsample_padding=0,
                resnet_act_fn=act_fn, resnet_groups=norm_num_groups, attention_head_dim=c_out,
                temb_channels=None))
        self.mid_block = _mid_block(chans[-1], norm_num_groups, act_fn, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=chans[-1], num_groups=norm_num_groups, eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)
        use_lean_blocks(self)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns (latent, features); features = [conv_in, down_0, ..., down_{L-1}, mid] outputs,
        the official ``return_features`` list."""
        h = self.conv_in(x)
        features = [h]
        for block in self.down_blocks:
            h = block(h)
            features.append(h)
        h = self.mid_block(h)
        features.append(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h))), features


class Decoder(nn.Module):
    """Latent [N, latent, h, w] -> image [N, 3, H, W] (+ every level's features)."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: list[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool):
        super().__init__()
        chans = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, chans[0], kernel_size=3, stride=1, padding=1)
        self.mid_block = _mid_block(chans[0], norm_num_groups, act_fn, mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        for i, c_out in enumerate(chans):
            c_in = chans[max(i - 1, 0)]
            self.up_blocks.append(get_up_block(
                "UpDecoderBlock2D", num_layers=layers_per_block + 1, in_channels=c_in, out_channels=c_out,
                prev_output_channel=None, add_upsample=i < len(chans) - 1, resnet_eps=RESNET_EPS,
                resnet_act_fn=act_fn, resnet_groups=norm_num_groups, attention_head_dim=c_out,
                temb_channels=None, resnet_time_scale_shift="default"))
            if i < len(chans) - 1:
                self.up_blocks[-1].upsamplers[0] = NearestUpsampleConv(c_out)
        self.conv_norm_out = nn.GroupNorm(num_channels=chans[-1], num_groups=norm_num_groups, eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)
        use_lean_blocks(self)

    def _levels(self, z: Tensor) -> Iterator[Tensor]:
        """The outputs of conv_in, the mid block and each up block, computed as they are read."""
        h = self.conv_in(z)
        yield h
        h = self.mid_block(h, None)
        yield h
        for block in self.up_blocks:
            h = block(h, None)
            yield h

    def forward(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns (image, features); features = [conv_in, mid, up_0, ..., up_{L-1}] outputs."""
        features = list(self._levels(z))
        return self.conv_out(self.conv_act(self.conv_norm_out(features[-1]))), features

    def features(self, z: Tensor, count: int) -> list[Tensor]:
        """The first ``count`` entries of ``forward``'s features, running only the levels they
        need: the conditional decoder reads the low-resolution ones, so building its context
        cache skips the costly full-resolution up blocks."""
        return list(itertools.islice(self._levels(z), count))


class CrossAttentionBlock(nn.Module):
    """z <- act(z + Attn(q = norm(z) + pos, kv = norm(context features) + pos)).

    The key/value GroupNorm normalises the t context frames jointly, as the official does
    (it stacks them along the height axis before the norm)."""

    def __init__(self, channels: int, resolution: int, kv_frames: int, norm_groups: int,
                 act_fn: str, num_heads: int, dropout: float):
        super().__init__()
        if channels % norm_groups or channels % num_heads:
            raise ValueError(f"the cross-attention at {resolution}x{resolution} has {channels} channels, not "
                             f"divisible by cross_attn_norm_groups={norm_groups} and cross_attn_heads={num_heads}: "
                             "set divisors of it, or lower max_att_resolution.")
        self.att = nn.MultiheadAttention(channels, num_heads, dropout=dropout, batch_first=True)
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_norm = nn.GroupNorm(norm_groups, channels)
        self.q_norm = nn.GroupNorm(norm_groups, channels)
        self.kv_frames = kv_frames
        self.kv_pos_emb = nn.Parameter(torch.zeros(kv_frames * resolution * resolution, channels))
        self.q_pos_emb = nn.Parameter(torch.zeros(resolution * resolution, channels))
        self.act = get_activation(act_fn)

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        """z [B*T, C, h, w] (T frames per batch entry), context [B, t, C, h, w] -> [B*T, C, h, w]."""
        return self.attend(z, *self.context_kv(context))

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Context features [B, t, C, h, w] -> the attention's keys and values, each
        [B, heads, t*h*w, C/heads]. They depend on the context only, so imagination computes
        them once per rollout instead of once per frame."""
        B, t, C, h, w = context.shape
        kv = self.kv_norm(context.transpose(1, 2).reshape(B, C, t * h, w))  # [B, C, t*h, w]
        kv = kv.flatten(2).transpose(1, 2) + self.kv_pos_emb  # [B, t*h*w, C]
        _, w_k, w_v = self.att.in_proj_weight.chunk(3)
        _, b_k, b_v = self.att.in_proj_bias.chunk(3)
        return self._heads(F.linear(kv, w_k, b_k)), self._heads(F.linear(kv, w_v, b_v))

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, C] -> [B, heads, L, C/heads]."""
        return x.unflatten(-1, (self.att.num_heads, -1)).transpose(1, 2)

    def attend(self, z: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """z [B*T, C, h, w] with the context's ``context_kv`` -> [B*T, C, h, w]; the maths of
        ``nn.MultiheadAttention`` (whose parameters these are) with the key/value half given."""
        BT, C, h, w = z.shape
        B = keys.shape[0]
        q = self.q_norm(z).flatten(2).transpose(1, 2) + self.q_pos_emb  # [B*T, h*w, C]
        q = q.reshape(B, BT // B * h * w, C)  # each frame's queries side by side: attention is per query
        w_q, b_q = self.att.in_proj_weight[:C], self.att.in_proj_bias[:C]
        out = F.scaled_dot_product_attention(self._heads(F.linear(q, w_q, b_q)), keys, values,
                                             dropout_p=self.att.dropout if self.training else 0.0)
        out = self.att.out_proj(out.transpose(1, 2).flatten(2))  # [B, T*h*w, C]
        out = self.resid_dropout(out).reshape(BT, h * w, C).transpose(1, 2).reshape(z.shape)
        return self.act(z + out.to(z.dtype))


def _cross_blocks(chans: list[int], resolutions: list[int], max_res: int, **kw) -> tuple[nn.ModuleList, list[int]]:
    """Cross-attention blocks for the levels whose resolution is <= max_res; returns (blocks, level ids)."""
    levels = [i for i, r in enumerate(resolutions) if r <= max_res]
    return nn.ModuleList(CrossAttentionBlock(chans[i], resolutions[i], **kw) for i in levels), levels


class ConditionalEncoder(Encoder):
    """Encoder of a future frame with cross-attention, after each down block of resolution
    <= max_att_resolution, to the context encoder's output of the same block."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: list[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool,
                 image_size: int, max_att_resolution: int, context_frames: int, num_heads: int, dropout: float,
                 norm_groups: int):
        super().__init__(in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                         act_fn, mid_block_add_attention)
        n = len(block_out_channels)
        resolutions = [image_size // 2 ** min(i + 1, n - 1) for i in range(n)]  # output side of down block i
        self.cross_att_blocks, self.att_levels = _cross_blocks(
            block_out_channels, resolutions, max_att_resolution, kv_frames=context_frames,
            norm_groups=norm_groups, act_fn=act_fn, num_heads=num_heads, dropout=dropout)

    def context_feature_ids(self) -> list[int]:
        """Which entries of ``Encoder.forward``'s feature list the cross-attention reads."""
        return [i + 1 for i in self.att_levels]

    def forward(self, x: Tensor, context: list[Tensor]) -> Tensor:  # type: ignore[override]
        """x [B*T, 3, H, W], context: one [B, t, C, h, w] per cross-attention block -> latent."""
        h = self.conv_in(x)
        att = dict(zip(self.att_levels, zip(self.cross_att_blocks, context)))
        for i, block in enumerate(self.down_blocks):
            h = block(h)
            if i in att:
                h = att[i][0](h, att[i][1])
        h = self.mid_block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class ConditionalDecoder(Decoder):
    """Decoder of a future frame with cross-attention after the mid block and after each up
    block of resolution <= max_att_resolution, to the context decoder's matching features."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: list[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool,
                 latent_size: int, max_att_resolution: int, context_frames: int, num_heads: int, dropout: float,
                 norm_groups: int):
        super().__init__(in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                         act_fn, mid_block_add_attention)
        n = len(block_out_channels)
        chans = list(reversed(block_out_channels))
        # level 0 = after the mid block, level i + 1 = after up block i
        resolutions = [latent_size] + [latent_size * 2 ** min(i + 1, n - 1) for i in range(n)]
        self.cross_att_blocks, self.att_levels = _cross_blocks(
            [chans[0]] + chans, resolutions, max_att_resolution, kv_frames=context_frames,
            norm_groups=norm_groups, act_fn=act_fn, num_heads=num_heads, dropout=dropout)

    def context_feature_ids(self) -> list[int]:
        """Which entries of ``Decoder.forward``'s feature list the cross-attention reads."""
        return [i + 1 for i in self.att_levels]

    def forward(self, z: Tensor, context: list[Tensor]) -> Tensor:  # type: ignore[override]
        """z [B*T, latent, h, w], context: one [B, t, C, h', w'] per cross-attention block -> image."""
        return self.decode_with_kv(z, self.context_kv(context))

    def context_kv(self, context: list[Tensor]) -> list[Tensor]:
        """The cross-attention blocks' keys and values of ``context`` (see
        ``CrossAttentionBlock.context_kv``), flat: [keys_0, values_0, keys_1, ...]."""
        return [t for block, c in zip(self.cross_att_blocks, context) for t in block.context_kv(c)]

    def decode_with_kv(self, z: Tensor, kv: list[Tensor]) -> Tensor:
        """``forward`` with the context given as ``context_kv``'s output."""
        att = dict(zip(self.att_levels, zip(self.cross_att_blocks, kv[0::2], kv[1::2])))  # level -> (block, k, v)
        h = self.mid_block(self.conv_in(z), None)
        if 0 in att:
            h = att[0][0].attend(h, *att[0][1:])
        for i, block in enumerate(self.up_blocks):
            h = block(h, None)
            if i + 1 in att:
                h = att[i + 1][0].attend(h, *att[i + 1][1:])
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))
