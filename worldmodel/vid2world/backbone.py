"""A small pixel-space video U-Net for diffusion, buildable causal or non-causal.

Every frame goes through the same 2-D U-Net (ResNet blocks, spatial self-attention at low
resolution, skip connections); frames talk to each other only through two temporal layers
in every block, both applied independently at each pixel:

- ``TemporalConv``: a residual 1-D convolution over frames, kernel 3. Non-causal taps are
  (t-1, t, t+1); causal taps are (t-2, t-1, t) (weights transferred by ``causalize.py``).
- ``TemporalAttention``: residual self-attention over frames with rotary frame positions;
  the causal build masks out later frames.

All normalisations act within one frame, so in the causal build nothing at frame t depends
on frames after t. Each frame carries its own conditioning embedding (noise level + action),
which is what diffusion forcing needs.

Incremental decoding (causal build only): ``TemporalCache`` records, in one pass over the
history frames, the inputs each temporal layer needs (the last two normalised frames for a
convolution, keys and values for attention); later passes over only the new frame reuse
them. This is exact: history features never depend on the new frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from worldmodel.vid2world.configs import BackboneConfig

KERNEL = 3  # temporal convolution taps


class TemporalCache:
    """History features of every temporal layer, for decoding new frames one at a time.

    ``mode`` is "record" (a pass over history frames stores what later frames need) or
    "extend" (a pass over new frames reads it). In "extend" the batch may be a multiple r of
    the recorded one (e.g. r = 2 for classifier-free guidance: [conditional; unconditional]).
    """

    def __init__(self) -> None:
        self.mode = "record"
        self.store: dict[nn.Module, tuple[torch.Tensor, ...]] = {}
        self.num_frames = 0  # history frames recorded

    def extend(self) -> "TemporalCache":
        self.mode = "extend"
        return self


def few_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """Attention over a few frames for a huge batch of pixel sequences, written out.

    q [N, heads, T, d], k and v [N, heads, S, d], mask [T, S] (True = may attend) or None.
    N = batch x pixels is in the hundreds of thousands at 64x64: cuDNN's fused attention fails
    on such batches on an H100 (``mha_graph.execute ... is_good()``), and with T, S of a few
    frames the scores [N, heads, T, S] are small, so the plain form costs little."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # [N, heads, T, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


def _repeat_batch(t: torch.Tensor, r: int) -> torch.Tensor:
    return t if r == 1 else t.repeat(r, *([1] * (t.dim() - 1)))


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position encoding of x [..., T, D] at integer frame positions [T]."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [D/2]
    angles = positions.to(torch.float32)[:, None] * freqs[None]  # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class TemporalConv(nn.Module):
    """Residual temporal convolution: x + conv_t(silu(norm(x))), at every pixel."""

    def __init__(self, channels: int, groups: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.norm = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv1d(channels, channels, KERNEL)  # weight [C, C, 3]

    def padding(self) -> tuple[int, int]:
        return (KERNEL - 1, 0) if self.causal else (KERNEL // 2, KERNEL // 2)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        B, T, C, H, W = x.shape
        h = F.silu(self.norm(x.flatten(0, 1)))  # [B*T, C, H, W], statistics within each frame
        h = h.view(B, T, C, H * W).permute(0, 3, 2, 1).reshape(B * H * W, C, T)
        if cache is None:
            out = self.conv(F.pad(h, self.padding()))
        elif cache.mode == "record":
            padded = F.pad(h, self.padding())  # causal: [N, C, T+2]
            cache.store[self] = (padded[:, :, -(KERNEL - 1):],)  # last two frames [N, C, 2]
            out = self.conv(padded)
        else:
            (past,) = cache.store[self]
            past = _repeat_batch(past, h.shape[0] // past.shape[0])
            out = self.conv(torch.cat([past, h], dim=2))  # [N, C, T]
        out = out.view(B, H * W, C, T).permute(0, 3, 2, 1).reshape(B, T, C, H, W)
        return x + out


class TemporalAttention(nn.Module):
    """Residual multi-head self-attention over frames, at every pixel."""

    def __init__(self, channels: int, head_dim: int, causal: bool, rope_theta: float):
        super().__init__()
        self.causal = causal
        self.heads = channels // head_dim
        self.rope_theta = rope_theta
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        B, T, C, H, W = x.shape
        tokens = x.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)
        q, k, v = (self.qkv(self.norm(tokens)).view(B * H * W, T, 3, self.heads, C // self.heads)
                   .permute(2, 0, 3, 1, 4))  # each [N, heads, T, head_dim]
        offset = 0
        if cache is not None and cache.mode == "extend":
            past_k, past_v = cache.store[self]
            offset = past_k.shape[2]
        positions = torch.arange(offset, offset + T, device=x.device)
        q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        if cache is not None and cache.mode == "record":
            cache.store[self] = (k, v)
        elif cache is not None:
            r = q.shape[0] // past_k.shape[0]
            k = torch.cat([_repeat_batch(past_k, r), k], dim=2)
            v = torch.cat([_repeat_batch(past_v, r), v], dim=2)
        mask = None
        if self.causal and T > 1:
            query_pos = positions[:, None]
            key_pos = torch.arange(k.shape[2], device=x.device)[None]
            mask = key_pos <= query_pos  # [T, offset+T], True = may attend
        out = few_frame_attention(q, k, v, mask)  # [N, heads, T, hd]
        out = self.proj(out.transpose(1, 2).reshape(B * H * W, T, C))
        return x + out.view(B, H, W, T, C).permute(0, 3, 4, 1, 2)


class SpatialAttention(nn.Module):
    """Residual multi-head self-attention over the pixels of each frame."""

    def __init__(self, channels: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W]
        N, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(N, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))  # [N, heads, HW, hd]
        return x + self.proj(out.transpose(-1, -2).reshape(N, C, H, W))


class VideoBlock(nn.Module):
    """Per-frame ResNet block -> temporal conv -> (spatial attention) -> temporal attention."""

    def __init__(self, cfg: BackboneConfig, in_ch: int, out_ch: int, spatial_attention: bool):
        super().__init__()
        self.resnet = ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=cfg.emb_dim,
                                    groups=cfg.groups, dropout=cfg.dropout,
                                    time_embedding_norm="scale_shift")
        self.temporal_conv = TemporalConv(out_ch, cfg.groups, cfg.causal)
        self.spatial_attention = SpatialAttention(out_ch, cfg.head_dim, cfg.groups) if spatial_attention else None
        self.temporal_attention = TemporalAttention(out_ch, cfg.head_dim, cfg.causal, cfg.rope_theta)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cache: TemporalCache | None) -> torch.Tensor:
        B, T = x.shape[:2]
        h = self.resnet(x.flatten(0, 1), emb)  # [B*T, C, H, W]
        h = self.temporal_conv(h.view(B, T, *h.shape[1:]), cache)
        if self.spatial_attention is not None:
            h = self.spatial_attention(h.flatten(0, 1)).view(h.shape)
        return self.temporal_attention(h, cache)


class VideoUNet(nn.Module):
    """Video denoiser: noisy frames [B, T, C, H, W] + per-frame conditioning -> v [B, T, C, H, W]."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], cfg.emb_dim)
        if cfg.action_dim > 0:
            self.action_embedding = nn.Sequential(nn.Linear(cfg.action_dim, cfg.emb_dim), nn.SiLU(),
                                                  nn.Linear(cfg.emb_dim, cfg.emb_dim))
        self.null_action = nn.Parameter(torch.zeros(cfg.emb_dim))  # "no action" embedding
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_ch, cur, res = [ch[0]], ch[0], cfg.image_size
        for level, out_ch in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                self.down.append(VideoBlock(cfg, cur, out_ch, res in cfg.attention_resolutions))
                cur = out_ch
                skip_ch.append(cur)
            if level < len(ch) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_ch.append(cur)
                res //= 2
        self.mid = nn.ModuleList([VideoBlock(cfg, cur, cur, True), VideoBlock(cfg, cur, cur, False)])
        self.up = nn.ModuleList()
        for level, out_ch in reversed(list(enumerate(ch))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(VideoBlock(cfg, cur + skip_ch.pop(), out_ch, res in cfg.attention_resolutions))
                cur = out_ch
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
                res *= 2
        self.norm_out = nn.GroupNorm(cfg.groups, cur)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        # Training only: keep each VideoBlock's input, not its activations, and recompute them in the
        # backward pass (Vid2World.config.gradient_checkpointing sets it; diffusers' attribute name)
        self.gradient_checkpointing = False

    @property
    def causal(self) -> bool:
        return self.cfg.causal

    # ----- per-frame conditioning -----
    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Integer noise levels [...] -> embeddings [..., E]."""
        flat = self.time_proj(timesteps.flatten()).to(self.conv_in.weight.dtype)
        return self.time_embedding(flat).view(*timesteps.shape, -1)

    def embed_action(self, actions: torch.Tensor | None, drop: torch.Tensor) -> torch.Tensor:
        """Actions [..., A] (each frame's previous action) -> [..., E]; null where drop [...] is True."""
        null = self.null_action.expand(*drop.shape, -1)
        if actions is None or self.cfg.action_dim == 0:
            return null
        return torch.where(drop[..., None], null, self.action_embedding(actions))

    def embed(self, timesteps: torch.Tensor, actions: torch.Tensor | None,
              drop: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning [B, T, E] = noise-level embedding + action embedding."""
        return self.embed_time(timesteps) + self.embed_action(actions, drop)

    # ----- denoiser -----
    def _block(self, block: "VideoBlock", h: torch.Tensor, emb: torch.Tensor,
               cache: TemporalCache | None) -> torch.Tensor:
        """One VideoBlock on h [B, T, C, H, W]; checkpointed when training with gradient_checkpointing
        (a cached pass is sampling, which keeps no activations anyway)."""
        if self.gradient_checkpointing and cache is None and torch.is_grad_enabled():
            return checkpoint(block, h, emb, None, use_reentrant=False)  # dropout's RNG is replayed
        return block(h, emb, cache)

    def forward(self, x: torch.Tensor, emb: torch.Tensor,
                cache: TemporalCache | None = None) -> torch.Tensor:
        """x [B, T, C, H, W] noisy frames, emb [B, T, E] -> v-prediction [B, T, C, H, W].
        With ``cache`` in "extend" mode, x holds only frames after the recorded history."""
        if cache is not None and not self.causal:
            raise ValueError("incremental decoding with a TemporalCache needs the causal backbone "
                             "(history features of a non-causal one depend on later frames).")
        B, T = x.shape[:2]
        emb = emb.reshape(B * T, -1)
        h = self.conv_in(x.flatten(0, 1))
        skips = [h]
        for layer in self.down:
            if isinstance(layer, VideoBlock):
                h = self._block(layer, h.view(B, T, *h.shape[1:]), emb, cache).flatten(0, 1)
            else:
                h = layer(h)
            skips.append(h)
        for block in self.mid:
            h = self._block(block, h.view(B, T, *h.shape[1:]), emb, cache).flatten(0, 1)
        for layer in self.up:
            if isinstance(layer, VideoBlock):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self._block(layer, h.view(B, T, *h.shape[1:]), emb, cache).flatten(0, 1)
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if cache is not None and cache.mode == "record":
            cache.num_frames = T
        return out.view(B, T, *out.shape[1:])
