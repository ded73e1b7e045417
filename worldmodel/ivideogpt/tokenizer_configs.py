"""Size presets of the compressive tokenizer; every key of the config dict is documented here.

The dict is plain and JSON-serialisable: ``CompressiveTokenizer(config)`` keeps it as
``self.config`` so a checkpoint's ``config.json`` rebuilds the same model.

Keys (defaults are the official iVideoGPT 64x64 tokenizer, ``configs/ctx_vae64/config.json``
and ``scripts/pretrain/oxe-64-act-free.sh``):

Architecture (changing these changes parameter shapes):
    image_size                 H = W of the frames.
    in_channels                image channels (3).
    block_out_channels         channels of each down block (and, reversed, each up block); every
                               block but the last halves the resolution.
    layers_per_block           resnets per down block (up blocks get one more, as in diffusers).
    norm_num_groups            GroupNorm groups everywhere (channels must be divisible by it).
    act_fn                     activation of the diffusers resnets ("silu").
    latent_channels            channels of the encoders' output / decoders' input.
    codebook_dim               dimension of each codebook vector (official ``vq_embed_dim``).
    context_vocab_size         codes in the context codebook (official ``num_vq_embeddings``).
    future_vocab_size          codes in the future codebook (official ``num_dyn_embeddings``).
    context_frames             context frames the conditional encoder / decoder attend to
                               (official ``context_length``); sizes the key position embeddings.
    patch_size                 the future latent map is cut into patch_size^2 patches, each
                               one token: 16x16 latents -> 4x4 = 16 tokens per future frame.
    max_att_resolution         cross-attention to context features at every feature map whose
                               side is <= this.
    mid_block_add_attention    self-attention in the mid block of the context encoder / decoder.
    cond_mid_block_add_attention  the same for the conditional encoder / decoder (the official
                               hard-codes True).
    cross_attn_heads           heads of the cross-attention blocks.
    cross_attn_dropout         attention and residual dropout of the cross-attention blocks.
    cross_attn_norm_groups     GroupNorm groups of the cross-attention blocks (the official
                               hard-codes 32 whatever norm_num_groups is).

Losses:
    commit_beta                weight of ||sg[e] - z||^2 in the VQ loss (codebook term weight 1);
                               the official uses 1.0 for both codebooks.
    rec_weight                 weight of the L1 reconstruction losses (context + future frames).
    perceptual_weight          weight of the perceptual losses when a perceptual net is loaded.
    perceptual_weights_path    None (off) or a .safetensors / .pt file with the weights of the
                               LPIPS-style net described by ``perceptual_channels`` (see losses.py).
    perceptual_channels        conv widths per VGG stage of that net; the default is VGG16's, the
                               layout of the published LPIPS weights.
    gan                        add a patch discriminator with hinge loss.
    disc_start                 tokenizer optimiser step from which the GAN terms are used (the
                               pretraining stage's step, or the tokenizer updates of an MBPO run).
                               The official ``global_step`` also counts the discriminator's
                               batches, so the official disc_start N is about N / 2 here.
    disc_weight                weight of the adaptive GAN generator loss (official 0.8).
    disc_depth                 strided conv layers of the discriminator (official 4).
    disc_hidden_channels       widest discriminator layer (official 512).
    adaptive_weight_max        clamp of the VQGAN adaptive weight (official 1e4).

Codebook health (absent from the official code):
    dead_code_reset            re-initialise codes unused for ``dead_code_steps`` training
                               batches from the current batch's encoder outputs.
    dead_code_steps            see above; counted in batches the tokenizer has trained on
                               (forward passes, so micro-batches under ``grad_accum``): a code
                               no input picked in that much data is dead, however it was stepped.
"""
from __future__ import annotations

import copy
from typing import Any

VGG16_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]

_PAPER64: dict[str, Any] = {
    "image_size": 64,
    "in_channels": 3,
    "block_out_channels": [128, 256, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "latent_channels": 64,
    "codebook_dim": 64,
    "context_vocab_size": 8192,
    "future_vocab_size": 8192,
    "context_frames": 2,
    "patch_size": 4,
    "max_att_resolution": 16,
    "mid_block_add_attention": False,
    "cond_mid_block_add_attention": True,
    "cross_attn_heads": 4,
    "cross_attn_dropout": 0.1,
    "cross_attn_norm_groups": 32,
    "commit_beta": 1.0,
    "rec_weight": 1.0,
    "perceptual_weight": 1.0,
    "perceptual_weights_path": None,
    "perceptual_channels": VGG16_STAGES,
    "gan": False,
    "disc_start": 0,
    "disc_weight": 0.8,
    "disc_depth": 4,
    "disc_hidden_channels": 512,
    "adaptive_weight_max": 1e4,
    "dead_code_reset": True,
    "dead_code_steps": 1000,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Official 64x64 tokenizer (ivideogpt-oxe-64-*): 16x16 context / 4x4 future tokens.
    "paper64": _PAPER64,
    # Official 256x256 tokenizer (configs/ctx_vae, aMUSEd-initialised): 4 downsamplings give
    # 16x16 latents, so the token counts per frame are the same as at 64x64.
    "paper256": {**_PAPER64, "image_size": 256, "block_out_channels": [128, 256, 256, 512, 768],
                 "max_att_resolution": 32},
    # Tests and CPU smoke runs: the same structure (3 levels, 16x16 / 4x4 tokens at 64x64) with
    # narrow channels and small codebooks. One cross-attention head of 32 channels: four heads
    # of 8 (the paper's head count) make the CPU's attention kernels ~5x slower, forward and
    # backward; with one, a fixed CPU budget buys ~30% more tokenizer updates and a better
    # reconstruction (docs/benchmarks.md, quality check).
    "tiny": {**_PAPER64, "block_out_channels": [16, 32, 32], "layers_per_block": 1,
             "norm_num_groups": 8, "latent_channels": 16, "codebook_dim": 16,
             "context_vocab_size": 64, "future_vocab_size": 64, "cross_attn_heads": 1, "cross_attn_dropout": 0.0,
             "perceptual_channels": [[8], [16]], "disc_hidden_channels": 32, "disc_depth": 3,
             "dead_code_steps": 20},
}


def tokenizer_config(name: str = "paper64", **overrides: Any) -> dict[str, Any]:
    """A fresh copy of preset ``name`` with ``overrides`` applied (unknown keys are refused)."""
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset '{name}'; choose one of {sorted(PRESETS)}.")
    config = copy.deepcopy(PRESETS[name])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown tokenizer config keys {unknown}; valid keys: {sorted(config)}.")
    config.update(copy.deepcopy(overrides))
    return config
