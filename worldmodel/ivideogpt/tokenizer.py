"""iVideoGPT's compressive tokenizer: a VQ autoencoder for context frames and a context-
conditioned VQ autoencoder for future frames.

Context frames are encoded independently (16x16 tokens per frame at 64x64). Each future frame
is encoded and decoded with cross-attention to the context frames' multi-scale feature maps, so
it only needs to carry what changed: its 16x16 latent map is cut into 4x4 patches and each patch
becomes one token (16 per frame). Each future frame depends on the context only, never on other
future frames, so any number of them can be encoded or decoded, one at a time or together.

Correspondence with the official code (``ivideogpt/vq_model/compressive_vq_model.py``):

    CompressiveTokenizer        <- CompressiveVQModel
      .encoder / .decoder       <- encoder / decoder           (tokenizer_blocks.Encoder / Decoder)
      .cond_encoder / .cond_decoder <- cond_encoder / cond_decoder (ConditionalEncoder / -Decoder)
      .quant_conv / .post_quant_conv  1x1 convs around the context codebook
      .quantize                 <- quantize          (context codebook, ``embedding.weight``)
      .quant_linear / .post_quant_linear  patch (p*p*latent) <-> code vector
      .dynamics_quantize        <- dynamics_quantize (future codebook)
      .discriminator            <- the separate ``Discriminator`` of train_tokenizer.py (GAN only)

State-dict keys and shapes equal the official ones (``discriminator.*`` aside). Pixels: the API
takes and returns frames in [-1, 1]; internally, like the official, the networks see [0, 1].
Losses follow ``train_tokenizer.py``: L1 on context and future reconstructions, the two VQ losses,
optional LPIPS-style perceptual terms, optional hinge GAN with VQGAN's adaptive weight measured
at ``cond_decoder.conv_out.weight`` after ``disc_start`` steps.

The decoder-side context cache can be rebuilt from context codes alone (the context decoder's
features depend on the codes only), which is what imagination needs; the encoder-side features
need the context frames themselves (``encode_context``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.interface import WorldModelConfigError
from worldmodel.ivideogpt.losses import PatchDiscriminator, PerceptualLoss, adaptive_gan_weight, hinge_d_loss
from worldmodel.ivideogpt.quantizer import VectorQuantizer
from worldmodel.ivideogpt.tokenizer_blocks import ConditionalDecoder, ConditionalEncoder, Decoder, Encoder
from worldmodel.ivideogpt.tokenizer_configs import PRESETS

log = logging.getLogger(__name__)

_RANGE_TOLERANCE = 1e-3  # frames may overshoot [-1, 1] by rounding


class TokenizerInputError(ValueError):
    """Frames or codes of the wrong shape, range or type were given to the tokenizer."""


@dataclass
class ContextCache:
    """Per-batch context features for the conditional encoder / decoder.

    codes [B, T0, hc, wc]; enc_features / dec_features: one [B, T0, C, h, w] tensor per
    cross-attention block of the conditional encoder / decoder. ``enc_features`` is None when the
    cache was rebuilt from codes (future frames can then be decoded but not encoded);
    ``dec_features`` is filled on first use by ``decode_future``, and ``dec_kv`` (the decoder's
    cross-attention keys and values of those features) by ``decoder_kv``."""

    codes: Tensor
    enc_features: tuple[Tensor, ...] | None = None
    dec_features: tuple[Tensor, ...] | None = None
    dec_kv: tuple[Tensor, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.codes.shape[0]

    def _map(self, fn) -> "ContextCache":
        feats = lambda fs: None if fs is None else tuple(fn(f) for f in fs)  # noqa: E731
        return ContextCache(fn(self.codes), feats(self.enc_features), feats(self.dec_features), feats(self.dec_kv))

    def repeat_interleave(self, n: int) -> "ContextCache":
        """Each batch entry repeated n times in place (for n imagined rollouts per context)."""
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def index_select(self, index: Tensor) -> "ContextCache":
        return self._map(lambda t: t.index_select(0, index))

    def to(self, device: torch.device | str) -> "ContextCache":
        return self._map(lambda t: t.to(device))

    def detach(self) -> "ContextCache":
        return self._map(lambda t: t.detach())


class CompressiveTokenizer(nn.Module):
    """Frames in [-1, 1] <-> context codes [B, T0, 16, 16] and future codes [B, T, 4, 4] (64x64)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        unknown = sorted(set(config) - set(PRESETS["paper64"]))
        if unknown:
            raise ValueError(f"unknown tokenizer config keys {unknown}; see tokenizer_configs.py.")
        missing = sorted(set(PRESETS["paper64"]) - set(config))
        if missing:
            raise ValueError(f"tokenizer config lacks {missing}; build it with tokenizer_config(...).")
        self.config = dict(config)
        c = self.config
        chans, n_levels = list(c["block_out_channels"]), len(c["block_out_channels"])
        self.image_size: int = c["image_size"]
        self.context_frames: int = c["context_frames"]
        self.context_vocab_size: int = c["context_vocab_size"]
        self.future_vocab_size: int = c["future_vocab_size"]
        self.patch_size: int = c["patch_size"]
        self.latent_channels: int = c["latent_channels"]
        latent = self.image_size // 2 ** (n_levels - 1)
        if latent * 2 ** (n_levels - 1) != self.image_size or latent % self.patch_size:
            step = 2 ** (n_levels - 1) * self.patch_size
            raise WorldModelConfigError(
                f"image_size {self.image_size} with {n_levels} levels gives a {latent}x{latent} latent map that "
                f"patch_size {self.patch_size} does not tile: this tokenizer needs a multiple of {step} (e.g. "
                "task.image_size=64; DMC tasks default to DrQ-v2's 84).")
        if any(ch % c["norm_num_groups"] for ch in chans + [self.latent_channels]):
            raise WorldModelConfigError(f"every channel count {chans} must be divisible by norm_num_groups "
                                        f"{c['norm_num_groups']}.")
        self.latent_size = latent
        self.context_token_shape: tuple[int, int] = (latent, latent)
        self.future_token_shape: tuple[int, int] = (latent // self.patch_size, latent // self.patch_size)

        blocks = dict(block_out_channels=chans, layers_per_block=c["layers_per_block"],
                      norm_num_groups=c["norm_num_groups"], act_fn=c["act_fn"])
        cross = dict(max_att_resolution=c["max_att_resolution"], context_frames=self.context_frames,
                     num_heads=c["cross_attn_heads"], dropout=c["cross_attn_dropout"],
                     norm_groups=c["cross_attn_norm_groups"])
        lc, dim, patch_dim = self.latent_channels, c["codebook_dim"], self.latent_channels * self.patch_size ** 2
        vq = dict(beta=c["commit_beta"], dead_code_reset=c["dead_code_reset"], dead_code_steps=c["dead_code_steps"])
        # encoders
        self.cond_encoder = ConditionalEncoder(c["in_channels"], lc, **blocks, image_size=self.image_size,
                                               mid_block_add_attention=c["cond_mid_block_add_attention"], **cross)
        self.encoder = Encoder(c["in_channels"], lc, **blocks, mid_block_add_attention=c["mid_block_add_attention"])
        # quantisation: context maps per position, future maps per p x p patch
        self.quant_conv = nn.Conv2d(lc, dim, 1)
        self.quantize = VectorQuantizer(self.context_vocab_size, dim, **vq)
        self.post_quant_conv = nn.Conv2d(dim, lc, 1)
        self.quant_linear = nn.Linear(patch_dim, dim)
        self.dynamics_quantize = VectorQuantizer(self.future_vocab_size, dim, **vq)
        self.post_quant_linear = nn.Linear(dim, patch_dim)
        # decoders
        self.cond_decoder = ConditionalDecoder(lc, c["in_channels"], **blocks, latent_size=latent,
                                               mid_block_add_attention=c["cond_mid_block_add_attention"], **cross)
        self.decoder = Decoder(lc, c["in_channels"], **blocks, mid_block_add_attention=c["mid_block_add_attention"])
        self._enc_ids = self.cond_encoder.context_feature_ids()
        self._dec_ids = self.cond_decoder.context_feature_ids()

        # optional losses
        self.discriminator = (PatchDiscriminator(c["in_channels"], c["disc_hidden_channels"], c["disc_depth"])
                              if c["gan"] else None)
        # The perceptual net is frozen and loaded from its own file, so it is kept out of the
        # module tree (and out of checkpoints); it follows the input's device when used. It is
        # loaded by the first training loss: a checkpoint trained with it still loads for
        # imagination where that file is not (another machine, the player).
        self._perceptual: list[PerceptualLoss] = []
        path = c["perceptual_weights_path"]
        if path and not os.path.isfile(path):
            log.warning("perceptual_weights_path %s does not exist: training this tokenizer will fail until it "
                        "does (or set it to null); imagination does not need it", path)
        self.last_recon: Tensor | None = None

    def _perceptual_net(self) -> PerceptualLoss | None:
        """The frozen perceptual net of ``perceptual_weights_path`` (None: no perceptual loss),
        loaded at the first call."""
        path = self.config["perceptual_weights_path"]
        if not path:
            return None
        if not self._perceptual:
            self._perceptual.append(PerceptualLoss(self.config["perceptual_channels"], os.fspath(path)))
        return self._perceptual[0]

    # ----- parameter groups -----
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if not n.startswith("discriminator."))

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        if self.discriminator is None:
            raise RuntimeError("this tokenizer has no discriminator: build it with config gan=True.")
        return self.discriminator.parameters()

    # ----- input checks and pixel range -----
    def _check_frames(self, frames: Tensor, what: str, n_frames: int | None = None) -> None:
        if not torch.is_tensor(frames) or not frames.is_floating_point():
            raise TokenizerInputError(f"{what} must be a float tensor in [-1, 1] (got "
                                      f"{getattr(frames, 'dtype', type(frames))}); convert uint8 with x / 127.5 - 1.")
        shape = (self.config["in_channels"], self.image_size, self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != shape:
            raise TokenizerInputError(f"{what} must be [B, T, {shape[0]}, {shape[1]}, {shape[2]}], "
                                      f"got {tuple(frames.shape)}.")
        if frames.numel() and frames.detach().abs().max() > 1 + _RANGE_TOLERANCE:
            largest = frames.detach().abs().max().item()
            raise TokenizerInputError(f"{what} must lie in [-1, 1] (got values up to {largest:.3g}); "
                                      f"scale uint8 frames with x / 127.5 - 1.")
        if n_frames is not None and frames.shape[1] != n_frames:
            raise TokenizerInputError(f"{what} must have {n_frames} frames (context_frames of the "
                                      f"config), got {frames.shape[1]}.")

    def _check_codes(self, codes: Tensor, what: str, token_shape: tuple[int, int], vocab: int) -> None:
        if not torch.is_tensor(codes) or codes.dtype != torch.long or codes.dim() != 4 \
                or tuple(codes.shape[2:]) != token_shape:
            got = f"{getattr(codes, 'dtype', type(codes))} {tuple(getattr(codes, 'shape', ()))}"
            raise TokenizerInputError(f"{what} must be a long tensor [B, T, {token_shape[0]}, {token_shape[1]}], "
                                      f"got {got}.")
        if codes.numel() and (codes.min() < 0 or codes.max() >= vocab):
            raise TokenizerInputError(f"{what} must lie in [0, {vocab}), got [{int(codes.min())}, {int(codes.max())}].")

    def _check_cache(self, cache: ContextCache, batch: int) -> None:
        if not isinstance(cache, ContextCache):
            raise TokenizerInputError(f"expected a ContextCache from encode_context, got {type(cache).__name__}.")
        if cache.batch_size != batch:
            raise TokenizerInputError(f"the context cache holds {cache.batch_size} batch entries but the "
                                      f"frames / codes have {batch}; use cache.repeat_interleave / index_select.")

    @staticmethod
    def _to_net(frames: Tensor) -> Tensor:
        return (frames + 1) / 2  # [-1, 1] -> the official [0, 1]

    @staticmethod
    def _from_net(x: Tensor) -> Tensor:
        return x * 2 - 1

    # ----- latent <-> codes helpers -----
    def _patchify(self, d: Tensor) -> Tensor:
        """[N, C, h, w] -> [N, (h/p)*(w/p), p*p*C], the official's (p_row, p_col, C) order."""
        N, C, h, w = d.shape
        p = self.patch_size
        return d.reshape(N, C, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(N, (h // p) * (w // p), -1)

    def _depatchify(self, x: Tensor) -> Tensor:
        """[N, (h/p)*(w/p), p*p*C] -> [N, C, h, w]."""
        N, p, C, s = x.shape[0], self.patch_size, self.latent_channels, self.latent_size
        return x.reshape(N, s // p, s // p, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, s, s)

    def _context_latent(self, codes: Tensor) -> Tensor:
        """codes [N, hc, wc] -> decoder input [N, latent, hc, wc]."""
        return self.post_quant_conv(self.quantize.lookup(codes).permute(0, 3, 1, 2))

    def _future_latent(self, codes: Tensor) -> Tensor:
        """codes [N, hf, wf] -> conditional decoder input [N, latent, h, w]."""
        return self._depatchify(self.post_quant_linear(self.dynamics_quantize.lookup(codes.flatten(1))))

    def _group(self, feats: list[Tensor], ids: list[int], B: int) -> tuple[Tensor, ...]:
        """Per-frame features [B*T0, C, h, w] -> the cross-attention inputs [B, T0, C, h, w]."""
        return tuple(feats[i].reshape(B, -1, *feats[i].shape[1:]) for i in ids)

    # ----- public API -----
    def encode_context(self, frames: Tensor) -> tuple[Tensor, ContextCache]:
        """[B, T0, 3, H, W] in [-1, 1] -> (codes [B, T0, hc, wc], cache for the future frames)."""
        self._check_frames(frames, "context frames", self.context_frames)
        B, T0 = frames.shape[:2]
        h, feats = self.encoder(self._to_net(frames.flatten(0, 1)))
        z = self.quant_conv(h)  # [B*T0, D, hc, wc]
        codes = self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        codes = codes.reshape(B, T0, *self.context_token_shape)
        return codes, ContextCache(codes, self._group(feats, self._enc_ids, B))

    def context_cache_from_codes(self, codes: Tensor) -> ContextCache:
        """Decoder-side cache from context codes [B, T0, hc, wc] alone: enough for
        ``decode_future``; ``encode_future`` needs the frames (``encode_context``)."""
        cache = ContextCache(codes)
        self.decoder_features(cache)
        return cache

    def encode_future(self, frames: Tensor, cache: ContextCache) -> Tensor:
        """[B, T, 3, H, W] in [-1, 1] -> codes [B, T, hf, wf]; frame t depends on the context only."""
        self._check_frames(frames, "future frames")
        self._check_cache(cache, frames.shape[0])
        if cache.enc_features is None:
            raise TokenizerInputError("this context cache was rebuilt from codes and holds no encoder "
                                      "features: build it with encode_context(frames) to encode future frames.")
        B, T = frames.shape[:2]
        d = self.quant_linear(self._patchify(self.cond_encoder(self._to_net(frames.flatten(0, 1)),
                                                               list(cache.enc_features))))
        codes = self.dynamics_quantize.nearest(d.reshape(-1, d.shape[-1]))
        return codes.reshape(B, T, *self.future_token_shape)

    def decode_context(self, codes: Tensor) -> Tensor:
        """[B, T0, hc, wc] -> frames [B, T0, 3, H, W] in [-1, 1]."""
        self._check_codes(codes, "context codes", self.context_token_shape, self.context_vocab_size)
        x, _ = self.decoder(self._context_latent(codes.flatten(0, 1)))
        return self._from_net(x).clamp(-1, 1).reshape(*codes.shape[:2], *x.shape[1:])

    def decode_future(self, codes: Tensor, cache: ContextCache) -> Tensor:
        """[B, T, hf, wf] -> frames [B, T, 3, H, W] in [-1, 1]; costs T frames (context cached)."""
        self._check_codes(codes, "future codes", self.future_token_shape, self.future_vocab_size)
        self._check_cache(cache, codes.shape[0])
        x = self.cond_decoder(self._future_latent(codes.flatten(0, 1)), list(self.decoder_features(cache)))
        return self._from_net(x).clamp(-1, 1).reshape(*codes.shape[:2], *x.shape[1:])

    def decode_newest(self, codes: Tensor, *dec_kv: Tensor) -> Tensor:
        """One future frame per batch entry, unchecked (no host sync, so it can be a CUDA graph):
        codes long [B, hf, wf] of valid ids, ``dec_kv`` = ``decoder_kv(cache)`` ->
        frame [B, 3, H, W] in [-1, 1]. Imagination's per-step decoding."""
        x = self.cond_decoder.decode_with_kv(self._future_latent(codes), list(dec_kv))
        return self._from_net(x).clamp(-1, 1)

    def decoder_kv(self, cache: ContextCache) -> tuple[Tensor, ...]:
        """The conditional decoder's cross-attention keys and values of the context (flat, see
        ``ConditionalDecoder.context_kv``), computed on first use and kept in ``cache``."""
        if cache.dec_kv is None:
            cache.dec_kv = tuple(self.cond_decoder.context_kv(list(self.decoder_features(cache))))
        return cache.dec_kv

    def decoder_features(self, cache: ContextCache) -> tuple[Tensor, ...]:
        """The conditional decoder's context features, computed on first use and kept in ``cache``."""
        if cache.dec_features is None:
            self._check_codes(cache.codes, "context codes", self.context_token_shape, self.context_vocab_size)
            if cache.codes.shape[1] != self.context_frames:
                raise TokenizerInputError(f"context codes must have {self.context_frames} frames, "
                                          f"got {cache.codes.shape[1]}.")
            latent = self._context_latent(cache.codes.flatten(0, 1))  # [B*T0, latent, hc, wc]
            feats = self.decoder.features(latent, max(self._dec_ids, default=-1) + 1)
            cache.dec_features = self._group(feats, self._dec_ids, cache.batch_size)
        return cache.dec_features

    # ----- training -----
    def forward(self, frames: Tensor, global_step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """frames [B, T0+T, 3, H, W] in [-1, 1] -> (generator loss, detached scalar metrics).

        The reconstruction [B, T0+T, 3, H, W] (detached, in [-1, 1]) is left in
        ``self.last_recon`` for ``discriminator_loss``."""
        self._check_frames(frames, "frames")
        B, T_all = frames.shape[:2]
        T0, c = self.context_frames, self.config
        if T_all <= T0:
            raise TokenizerInputError(f"frames must hold the {T0} context frames plus at least one "
                                      f"future frame, got {T_all} frames.")
        x = self._to_net(frames)
        ctx, fut = x[:, :T0].flatten(0, 1), x[:, T0:].flatten(0, 1)  # [B*T0, 3, H, W], [B*T, 3, H, W]

        # context: independent VQ autoencoder
        h, enc_feats = self.encoder(ctx)
        z = self.quant_conv(h)  # [B*T0, D, hc, wc]
        D = z.shape[1]
        zq, ctx_commit, _, ctx_stats = self.quantize(z.permute(0, 2, 3, 1).reshape(-1, D))
        zq = zq.reshape(z.shape[0], *self.context_token_shape, D).permute(0, 3, 1, 2)
        ctx_rec, dec_feats = self.decoder(self.post_quant_conv(zq.to(z.dtype)))

        # future: conditional VQ autoencoder, one token per p x p latent patch
        d = self.quant_linear(self._patchify(self.cond_encoder(fut, list(self._group(enc_feats, self._enc_ids, B)))))
        dq, fut_commit, _, fut_stats = self.dynamics_quantize(d.reshape(-1, D))
        dq = self.post_quant_linear(dq.reshape(d.shape).to(d.dtype))
        fut_rec = self.cond_decoder(self._depatchify(dq), list(self._group(dec_feats, self._dec_ids, B)))

        ctx_rec, fut_rec = ctx_rec.float(), fut_rec.float()
        rec_loss = F.l1_loss(fut_rec, fut) + F.l1_loss(ctx_rec, ctx)
        commit_loss = ctx_commit + fut_commit
        loss = c["rec_weight"] * rec_loss + commit_loss
        metrics: dict[str, Tensor] = {"rec_loss": rec_loss, "commit_loss": commit_loss}

        fut_ref_loss = F.l1_loss(fut_rec, fut)  # what the GAN term is balanced against
        net = self._perceptual_net()
        if net is not None:
            if net.shift.device != x.device:
                net.to(x.device)
            fut_perc = net(fut * 2 - 1, fut_rec * 2 - 1).mean()
            perc = fut_perc + net(ctx * 2 - 1, ctx_rec * 2 - 1).mean()
            loss = loss + c["perceptual_weight"] * perc
            metrics["perceptual_loss"] = perc
            fut_ref_loss = fut_perc

        if self.discriminator is not None and global_step >= c["disc_start"]:
            # the discriminator is frozen here: the generator loss must not leave gradients on it
            self.discriminator.requires_grad_(False)
            try:
                gen_loss = -self.discriminator(torch.cat([ctx_rec, fut_rec])).float().mean()
            finally:
                self.discriminator.requires_grad_(True)
            last = self.cond_decoder.conv_out.weight
            if torch.is_grad_enabled() and last.requires_grad:
                weight = adaptive_gan_weight(fut_ref_loss, gen_loss, last, c["adaptive_weight_max"])
            else:  # evaluation: no gradients to balance
                weight = torch.ones((), device=x.device)
            loss = loss + c["disc_weight"] * weight * gen_loss
            metrics.update(gan_loss=gen_loss, adaptive_weight=weight)

        for name, s in (("ctx", ctx_stats), ("fut", fut_stats)):
            metrics.update({f"{name}_{k}": v for k, v in s.items()})
        metrics["perplexity"] = (ctx_stats["perplexity"] + fut_stats["perplexity"]) / 2
        if self.training:
            metrics["codes_used"] = (ctx_stats["codes_used"] + fut_stats["codes_used"]) / 2
            metrics["dead_codes_reset"] = ctx_stats["dead_codes_reset"] + fut_stats["dead_codes_reset"]
        else:
            metrics["codes_used"] = (ctx_stats["batch_codes_used"] + fut_stats["batch_codes_used"]) / 2
            metrics["dead_codes_reset"] = torch.zeros((), device=x.device)
        metrics = {k: v.detach().float() for k, v in metrics.items()}
        metrics["loss"] = loss.detach()

        recon = torch.cat([ctx_rec.reshape(B, T0, *ctx_rec.shape[1:]),
                           fut_rec.reshape(B, T_all - T0, *fut_rec.shape[1:])], 1)
        self.last_recon = self._from_net(recon).detach()
        return loss, metrics

    def discriminator_loss(self, frames: Tensor, recon: Tensor, global_step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the patch discriminator on real frames vs reconstructions, both
        [B, T, 3, H, W] in [-1, 1] (recon: ``self.last_recon``). Zero before ``disc_start``."""
        if self.discriminator is None:
            raise RuntimeError("discriminator_loss needs a GAN tokenizer: build it with config gan=True.")
        self._check_frames(frames, "frames")
        if recon.shape != frames.shape:
            raise TokenizerInputError(f"recon {tuple(recon.shape)} must have the shape of frames "
                                      f"{tuple(frames.shape)}.")
        real = self.discriminator(self._to_net(frames.flatten(0, 1)))
        fake = self.discriminator(self._to_net(recon.detach().flatten(0, 1)))
        active = float(global_step >= self.config["disc_start"])
        loss = hinge_d_loss(real.float(), fake.float()) * active
        return loss, {"disc_loss": loss.detach(), "logits_real": real.detach().float().mean(),
                      "logits_fake": fake.detach().float().mean()}
