"""The official iVideoGPT imagination loop, run on this package's modules: the baseline that the
imagination speed is measured against, and a check that ``IVideoGPT.reset``/``step`` imagine
what the official procedure imagines.

thuml/iVideoGPT's ``mbrl/video_predictor.py`` (``rollout``) does, per rollout of k frames:

1. ``tokenize(cat(context, zeros_like(context)))``: the context frames, plus as many all-zero
   future frames through the conditional encoder, whose codes are thrown away;
2. per frame: ``llm.generate(inputs_embeds=<the whole sequence so far>, do_sample=True,
   top_k=100, max_new_tokens=Nf + 1, output_hidden_states=True, return_dict_in_generate=True)``,
   a re-prefill of every earlier token; the reward is read from the last step's hidden state;
3. per frame: ``detokenize(context codes + newest codes, cache=cache)``. The first call decodes
   the context frames in full and keeps their features; every call runs the conditional decoder,
   whose cross-attention recomputes the context's keys and values.

``official_rollout`` does the same with this package's tokenizer and transformer, with two
differences that keep its draws those of ``IVideoGPT.step`` (so the frames can be compared):
codes are drawn from the future-code logits only, with the model's sampler and generator (the
official samples the whole vocabulary with torch's global generator, and can emit an id that is
not a future code), and generate()'s own sampling then picks that code. The draw is made inside
generate() by a logits processor, so generate()'s per-token machinery (its logits processors,
top-k over the whole vocabulary, cache bookkeeping and hidden-state outputs) is all paid, as in
the official loop. Each code is so drawn twice: by the processor, then by generate()'s own top-k
and multinomial over the one finite logit left. generate() cannot draw the cached path's codes
itself (it samples the whole vocabulary with torch's global generator), so the extra draw stays,
and the baseline does that much more than the official code: about 1% of its time (0.020 s of
1.95 s per rollout inside the processor; tiny/tiny, B=8, k=10, one CPU thread, 2026-11-24).
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from worldmodel.ivideogpt.model import IVideoGPT, frames_to_unit, unit_to_frames
from worldmodel.ivideogpt.tokenizer import CompressiveTokenizer, ContextCache
from worldmodel.ivideogpt.transformer import sample_future_codes, symexp


class DrawFutureCode(LogitsProcessor):
    """Draws each frame's codes as ``IVideoGPT.step`` does and leaves generate() a single
    finite logit, the drawn id. The (Nf + 1)-th new token, which the official loop discards, is
    forced to the slot id without a draw, so the generator advances as on the cached path."""

    def __init__(self, model: IVideoGPT, generator: torch.Generator | None):
        self.layout, self.sampling, self.generator = model.layout, model.sampling, generator
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        if self.calls % lay.frame_length < lay.future_tokens:
            future = scores[:, lay.context_vocab:lay.context_vocab + lay.future_vocab]  # [B, Vf]
            ids = sample_future_codes(future, self.sampling["temperature"], self.sampling["top_k"],
                                      self.generator) + lay.context_vocab
        else:
            ids = torch.full(scores.shape[:1], lay.sdf, dtype=torch.long, device=scores.device)
        self.calls += 1
        return torch.full_like(scores, float("-inf")).scatter_(1, ids[:, None], 0.0)


def decode_context_keeping_features(tok: CompressiveTokenizer, codes: torch.Tensor,
                                    cache: ContextCache) -> torch.Tensor:
    """``tok.decode_context(codes)`` that keeps the decoder's context features in ``cache``, as the
    official's first detokenize keeps them from its full decode: ``decode_future`` then reads them
    instead of running the decoder's first levels again."""
    x, feats = tok.decoder(tok._context_latent(codes.flatten(0, 1)))
    cache.dec_features = tok._group(feats, tok._dec_ids, codes.shape[0])
    return tok._from_net(x).clamp(-1, 1).reshape(*codes.shape[:2], *x.shape[1:])


@torch.no_grad()
def official_rollout(model: IVideoGPT, context_obs: torch.Tensor, actions: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official loop from real frames uint8 [B, T, 3, H, W] (the last ``context_frames``
    are used) under actions [B, k, A] -> (frames uint8 [B, k, 3, H, W], rewards [B, k]).
    With the same generator seed it returns what ``reset``/``step`` return."""
    tok, tf, lay = model.tokenizer, model.transformer, model.layout
    T0, (B, k) = model.context_frames, actions.shape[:2]
    draw = DrawFutureCode(model, generator)
    temperature, top_k = model.sampling["temperature"], model.sampling["top_k"]
    sampling = (dict(do_sample=True, temperature=temperature, top_k=top_k) if temperature > 0
                else dict(do_sample=False))  # generate()'s own sampling, as the official sets it
    embed_tokens = tf.llm.get_input_embeddings()
    frames, rewards = [], []
    with model._imagining():
        context = frames_to_unit(context_obs[:, -T0:].to(model.device))
        ctx_codes, cache = tok.encode_context(context)
        tok.encode_future(torch.zeros_like(context), cache)  # the official's dummy future frames
        slot = torch.full((B, 1), lay.sdf, dtype=torch.long, device=model.device)
        embeds = tf.embed(torch.cat([lay.prelude(ctx_codes.flatten(2)), slot], 1))  # [B, L, D]
        for t in range(k):
            action = actions[:, t].to(model.device, torch.float32)
            if tf.action_linear is not None:
                embeds[:, -1] += tf.action_linear(action)
            out = tf.llm.generate(inputs_embeds=embeds, **sampling, max_new_tokens=lay.frame_length,
                                  use_cache=True, pad_token_id=lay.sdf, output_hidden_states=True,
                                  return_dict_in_generate=True, logits_processor=LogitsProcessorList([draw]))
            new_ids = out.sequences[:, -lay.frame_length:]  # [B, Nf + 1]: the codes, then a slot
            rewards.append(symexp(tf.reward(out.hidden_states[-1][-1][:, -1]).float()))
            codes = (new_ids[:, :-1] - lay.context_vocab).view(B, 1, *tok.future_token_shape)
            with model._decoding_precision():
                if t == 0:  # the official's first detokenize decodes the context frames in full
                    decode_context_keeping_features(tok, ctx_codes, cache)
                frames.append(unit_to_frames(tok.decode_future(codes, cache)[:, 0]))
            embeds = torch.cat([embeds, embed_tokens(new_ids)], 1)  # the codes and the next slot
    return torch.stack(frames, 1), torch.stack(rewards, 1)
