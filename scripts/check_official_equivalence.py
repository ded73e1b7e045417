"""Check that this toolkit's iVideoGPT computes what the official thuml/iVideoGPT code computes.

Given a checkout of https://github.com/thuml/iVideoGPT (nothing is downloaded here), the script
builds tiny models with the official classes (``CompressiveVQModel`` and ``HeadModelWithAction``
around a ``LlamaForCausalLM``) and seeded random weights, writes them in the official checkpoint
layout, imports that directory with ``worldmodel.ivideogpt.official.import_official`` and runs
both on the same frames and actions. It prints the largest difference of each output and exits
with status 1 if any exceeds ``--tolerance`` (token ids must match exactly):

    python scripts/check_official_equivalence.py --official-repo ~/src/iVideoGPT

The weights the official code starts at zero (position embeddings, action and reward heads) or
near zero (codebooks) are drawn at random, so that every part shapes the outputs.

Deliberate differences are not compared: our transformer loss leaves out the separator tokens
(deterministic), reward j is trained against reward[T0 - 1 + j] (the official's is a step late)
and imagination samples only future codes. See worldmodel/ivideogpt/model.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402
from worldmodel.ivideogpt.official import import_official  # noqa: E402

ACTION_DIM, CONTEXT, FUTURE, SIZE, BATCH = 4, 2, 2, 64, 2
# The official 64x64 tokenizer's structure (configs/ctx_vae64/config.json) at narrow widths.
TOKENIZER = {
    "act_fn": "silu", "block_out_channels": [16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "layers_per_block": 1, "lookup_from_codebook": True, "mid_block_add_attention": False, "norm_num_groups": 8,
    "norm_type": "group", "num_vq_embeddings": 64, "num_dyn_embeddings": 32, "sample_size": 32,
    "scaling_factor": 0.18215, "vq_embed_dim": 8, "force_upcast": True, "context_length": CONTEXT,
    "resolution": SIZE, "max_att_resolution": 16,
}
CONTEXT_TOKENS, FUTURE_TOKENS = 16 * 16, 4 * 4  # per frame at 64x64
DECODER_OUT_SCALE = 0.1  # shrinks the random decoders' output convolutions (see official_models)
LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
         "num_hidden_layers": 2, "vocab_size": 64 + 32 + 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
         "tie_word_embeddings": False}


def import_official_classes(repo: Path) -> tuple[type, type]:
    """The official tokenizer and transformer head classes, imported from a checkout."""
    package = repo / "ivideogpt"
    if not (package / "vq_model" / "compressive_vq_model.py").is_file():
        raise SystemExit(f"{repo} is not a checkout of thuml/iVideoGPT (ivideogpt/vq_model/"
                         "compressive_vq_model.py is missing); clone https://github.com/thuml/iVideoGPT.")
    sys.path.insert(0, str(repo))
    # The official vq_model package imports its LPIPS loss, which needs torchvision; a training
    # loss is not compared here, and this project does not install torchvision.
    lpips = types.ModuleType("ivideogpt.vq_model.lpips")
    lpips.LPIPS = None
    sys.modules["ivideogpt.vq_model.lpips"] = lpips
    from ivideogpt.transformer.action_model import HeadModelWithAction
    from ivideogpt.vq_model.compressive_vq_model import CompressiveVQModel
    return CompressiveVQModel, HeadModelWithAction


@torch.no_grad()
def official_models(tokenizer_cls: type, head_cls: type, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    tokenizer = tokenizer_cls(**TOKENIZER).eval()
    for name, p in tokenizer.named_parameters():
        if name.endswith("pos_emb"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        elif "quantize.embedding" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    # Random decoders put over half of the pixels outside the frame range, where both sides clamp and
    # a difference would go unseen: their last convolutions are shrunk around mid-grey (the network's
    # [0, 1] frames), so that every compared pixel is inside the range.
    for decoder in (tokenizer.decoder, tokenizer.cond_decoder):
        decoder.conv_out.weight.mul_(DECODER_OUT_SCALE)
        decoder.conv_out.bias.fill_(0.5)
    head = head_cls(LlamaForCausalLM(LlamaConfig(**LLAMA)), action_dim=ACTION_DIM,
                    prelude_tokens_num=(CONTEXT_TOKENS + 1) * CONTEXT - 1, tokens_num_per_dyna=FUTURE_TOKENS,
                    context=CONTEXT, segment_length=CONTEXT + FUTURE, model_type="llama",
                    reward_prediction=True).eval()
    for linear in (head.action_linear, head.reward_linear):
        linear.weight.normal_(0, 0.5, generator=g)
        linear.bias.normal_(0, 0.1, generator=g)
    head.llm.model.embed_tokens.weight.normal_(0, 1.0, generator=g)
    return tokenizer, head


def write_official_checkpoint(tokenizer: torch.nn.Module, head: torch.nn.Module, root: Path) -> None:
    """The layout of the official Hugging Face repositories: tokenizer/ and transformer/."""
    tokenizer.save_pretrained(root / "tokenizer", safe_serialization=True)
    (root / "transformer").mkdir(parents=True, exist_ok=True)
    head.llm.config.save_pretrained(root / "transformer")
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, root / "transformer" / "model.safetensors")


@torch.no_grad()
def compare(tokenizer: torch.nn.Module, head: torch.nn.Module, ours: IVideoGPT, seed: int) -> dict[str, float]:
    """Largest differences between the official outputs and ours on the same inputs."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.rand(BATCH, CONTEXT + FUTURE, 3, SIZE, SIZE, generator=g)  # [B, T, 3, H, W] in [0, 1]: official
    action = torch.rand(BATCH, CONTEXT + FUTURE, ACTION_DIM, generator=g) * 2 - 1  # action[t] taken at frame t
    frames = unit * 2 - 1  # ours: [-1, 1]

    ids_official, labels = tokenizer.tokenize(unit, CONTEXT)  # [B, L]
    context_codes, future_codes = ours.tokenize(frames)  # [B, T0, Nc], [B, k, Nf]
    ids_ours = ours.layout.sequence(context_codes, future_codes)

    tok = ours.tokenizer
    context_map = context_codes.view(BATCH, CONTEXT, *tok.context_token_shape)
    future_map = future_codes.view(BATCH, FUTURE, *tok.future_token_shape)
    decoded = tokenizer.detokenize(ids_official, CONTEXT).mul(2).sub(1)  # [B, T, 3, H, W], not clamped
    cache = tok.context_cache_from_codes(context_map)

    output, reward = head(input_ids=ids_official, labels=labels, action=action)
    hidden = ours.transformer.run(ours.transformer.embed(ids_ours, action[:, CONTEXT - 1:CONTEXT - 1 + FUTURE]))
    reward_ours = ours.transformer.reward(hidden[:, ours.layout.reward_positions(FUTURE)])  # [B, k]

    def gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a.double() - b.double()).abs().max().item()

    return {
        # ours clamps to [-1, 1]: a pixel outside would hide a difference (0 with DECODER_OUT_SCALE)
        "decoded pixels outside [-1, 1] (share)": (decoded.abs() > 1).double().mean().item(),
        "token ids (count differing)": float((ids_official != ids_ours).sum()) if ids_official.shape == ids_ours.shape
        else float("inf"),
        "decoded context frames": gap(decoded[:, :CONTEXT], tok.decode_context(context_map)),
        "decoded future frames": gap(decoded[:, CONTEXT:], tok.decode_future(future_map, cache)),
        "transformer logits": gap(output.logits, ours.transformer.logits(hidden)),
        "reward head (symlog)": gap(reward.squeeze(-1), reward_ours),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="a checkout of thuml/iVideoGPT")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed fp32 difference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tokenizer_cls, head_cls = import_official_classes(args.official_repo.expanduser().resolve())
    tokenizer, head = official_models(tokenizer_cls, head_cls, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_official_checkpoint(tokenizer, head, Path(tmp))
        ours, report = import_official(tmp, action_dim=ACTION_DIM, max_future_frames=FUTURE)
    print(report.summary())
    gaps = compare(tokenizer, head, ours.eval(), args.seed)
    failed = []
    for name, value in gaps.items():
        exact = name.startswith("token ids")
        ok = value == 0 if exact else value <= args.tolerance
        failed += [] if ok else [name]
        print(f"{name:<30} {value:.3g}  {'ok' if ok else 'DIFFERENT'}")
    print("SUMMARY " + ("matches the official code" if not failed else f"differs from the official code: {failed}"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
