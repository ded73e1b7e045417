"""Check that this toolkit's iVideoGPT computes what the official thuml/iVideoGPT code computes.

Given a checkout of https://github.com/thuml/iVideoGPT (nothing is downloaded here), the script
builds tiny models with the official classes (``CompressiveVQModel`` and ``HeadModelWithAction``
around a ``LlamaForCausalLM``) and seeded random weights, writes them in the official checkpoint
layout, imports that directory with ``worldmodel.ivideogpt.official.import_official`` and runs
both on the same frames and actions. It prints the largest difference of each output and exits
with status 1 if any exceeds ``--tolerance`` (token ids must match exactly):

    python scripts/check_official_equivalence.py --official-repo ~/src/iVideoGPT

``--write-fixture DIR`` instead writes the committed test fixture (tests/fixtures/ivideogpt_official,
read by tests/test_import_ivideogpt.py, so that the default test run compares against the official
code without a checkout): such a model's official config.json files and official tensor names and
shapes (its weight values are given by ``fixture_weights``), fixed frames and actions, and the official
outputs for them, with the official commit and this command in fixture.json:

    python scripts/check_official_equivalence.py --official-repo ~/src/iVideoGPT \
        --write-fixture tests/fixtures/ivideogpt_official

The weights the official code starts at zero (position embeddings, action and reward heads) or
near zero (codebooks) are drawn at random, so that every part shapes the outputs.

Deliberate differences are not compared: our transformer loss leaves out the separator tokens
(deterministic), reward j is trained against reward[T0 - 1 + j] (the official's is a step late)
and imagination samples only future codes. See worldmodel/ivideogpt/model.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
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
# The committed test fixture (--write-fixture): the models above with smaller codebooks (still of different
# sizes, which catches swaps) and one segment. Even the narrowest official structure holds ~0.5M weights (the
# official cross-attention norms have 32 groups), too many to commit: the fixture stores each official
# tensor's name, shape, mean and spread, and its values come from fixture_weights, exactly on any platform.
FIXTURE_TOKENIZER = {**TOKENIZER, "num_vq_embeddings": 16, "num_dyn_embeddings": 8}
FIXTURE_LLAMA = {**LLAMA, "vocab_size": 16 + 8 + 2}
FIXTURE_BATCH = 1
_PRIME = 2 ** 31 - 1


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
def official_models(tokenizer_cls: type, head_cls: type, seed: int, tokenizer_config: dict = TOKENIZER,
                    llama_config: dict = LLAMA) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    tokenizer = tokenizer_cls(**tokenizer_config).eval()
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
    head = head_cls(LlamaForCausalLM(LlamaConfig(**llama_config)), action_dim=ACTION_DIM,
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


def official_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def portable_uniform(n: int, stream: int) -> torch.Tensor:
    """n numbers in [-1, 1) from an integer hash of (stream, index): int64 arithmetic, so the same on
    every platform and torch version (unlike a seeded generator)."""
    x = (torch.arange(n, dtype=torch.int64) + stream * 1_000_003) % _PRIME
    for a, c in ((48271, 12345), (69621, 54321), (16807, 99991)):  # products stay below 2**63
        x = (x * a + c) % _PRIME
        x = (x * x + c) % _PRIME
    return (x.double() / _PRIME * 2 - 1).float()


def fixture_weights(spec: list[list]) -> dict[str, torch.Tensor]:
    """The fixture's official state dict from its [name, shape, mean, std] list (fixture.json "weights")."""
    return {name: (portable_uniform(math.prod(shape), k) * (std * math.sqrt(3)) + mean).reshape(shape)
            for k, (name, shape, mean, std) in enumerate(spec)}


def weights_spec(prefix: str, module: torch.nn.Module) -> list[list]:
    """[name, shape, mean, std] of each tensor: the statistics of the official initialisation (rounded),
    with a spread of 0.05 where it is constant (norms, zero biases), so that every tensor shapes the outputs."""
    spec = []
    for name, v in module.state_dict().items():
        std = float(f"{v.double().std():.3g}") if v.numel() > 1 else 0.0
        spec.append([prefix + name, list(v.shape), float(f"{v.double().mean():.3g}"), std if std > 0 else 0.05])
    return spec


@torch.no_grad()
def write_fixture(tokenizer_cls: type, head_cls: type, out: Path, seed: int, commit: str) -> None:
    """The test fixture in ``out``: the official configs (tokenizer/, transformer/ config.json), the
    official weights' names, shapes and statistics (fixture.json; values from fixture_weights), inputs and
    the official outputs for them (outputs.safetensors), and what made them (fixture.json)."""
    import diffusers
    import transformers

    tokenizer, head = official_models(tokenizer_cls, head_cls, seed, FIXTURE_TOKENIZER, FIXTURE_LLAMA)
    spec = weights_spec("tokenizer/", tokenizer) + weights_spec("transformer/", head)
    if any(not v.is_floating_point() for m in (tokenizer, head) for v in m.state_dict().values()):
        raise SystemExit("the official state dicts hold non-float tensors: fixture_weights cannot make them")
    weights = fixture_weights(spec)
    for prefix, module in (("tokenizer/", tokenizer), ("transformer/", head)):
        module.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(FIXTURE_BATCH * (CONTEXT + FUTURE), 3, 8, 8, generator=g)  # blobs: codes vary over the frame
    frames = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear").mul(255).round().to(
        torch.uint8).view(FIXTURE_BATCH, CONTEXT + FUTURE, 3, SIZE, SIZE)
    action = torch.rand(FIXTURE_BATCH, CONTEXT + FUTURE, ACTION_DIM, generator=g) * 2 - 1  # action[t] at frame t
    ids, labels = tokenizer.tokenize(frames.float() / 255, CONTEXT)  # [B, L]
    decoded = tokenizer.detokenize(ids, CONTEXT).mul(2).sub(1)  # [B, T, 3, H, W], not clamped
    if decoded.abs().max() > 1:  # ours clamps: a pixel outside would hide a difference
        raise SystemExit("decoded pixels outside [-1, 1]: pick another --seed")
    output, reward = head(input_ids=ids, labels=labels, action=action)
    with tempfile.TemporaryDirectory() as tmp:  # the configs exactly as the official code saves them
        write_official_checkpoint(tokenizer, head, Path(tmp))
        for part in ("tokenizer", "transformer"):
            (out / part).mkdir(parents=True, exist_ok=True)
            (out / part / "config.json").write_text((Path(tmp) / part / "config.json").read_text())
    save_file({"frames": frames, "action": action.contiguous(), "token_ids": ids.contiguous(),
               "decoded": decoded.contiguous(), "logits": output.logits.contiguous(),
               "reward": reward.squeeze(-1).contiguous()}, out / "outputs.safetensors", metadata={"format": "pt"})
    meta = {
        "what": "a tiny official iVideoGPT (CompressiveVQModel; HeadModelWithAction around LlamaForCausalLM) with "
                "random weights and its outputs. tokenizer/ and transformer/ hold the official config.json files; "
                "weights lists each official tensor as [checkpoint file folder/official name, shape, mean, std], "
                "its values given by fixture_weights in scripts/check_official_equivalence.py (mean + std * sqrt(3) "
                "* uniform in [-1, 1) from an integer hash of (list index, element index)). outputs.safetensors "
                "holds the inputs, frames (uint8 [B, T, 3, H, W]; the official input is frames / 255) and action "
                "([B, T, A], action[t] taken at frame t), and the official outputs in fp32: token_ids "
                "(CompressiveVQModel.tokenize), decoded (detokenize, mapped to [-1, 1]), logits and reward "
                "(HeadModelWithAction.forward).",
        "official_repository": "https://github.com/thuml/iVideoGPT", "official_commit": commit,
        "command": "python scripts/check_official_equivalence.py --official-repo <checkout of thuml/iVideoGPT at "
                   f"official_commit> --write-fixture tests/fixtures/ivideogpt_official --seed {seed}",
        "seed": seed, "context_frames": CONTEXT, "future_frames": FUTURE, "action_dim": ACTION_DIM,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "diffusers": diffusers.__version__},
    }
    text = json.dumps(meta, indent=1)[:-2]  # one line per tensor
    text += ',\n "weights": [\n  ' + ",\n  ".join(json.dumps(entry) for entry in spec) + "\n ]\n}\n"
    (out / "fixture.json").write_text(text)


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
    parser.add_argument("--write-fixture", type=Path, metavar="DIR",
                        help="write the test fixture (tests/fixtures/ivideogpt_official) there instead of comparing")
    parser.add_argument("--official-commit", help="recorded in the fixture (default: the checkout's git HEAD)")
    args = parser.parse_args(argv)
    repo = args.official_repo.expanduser().resolve()
    tokenizer_cls, head_cls = import_official_classes(repo)
    if args.write_fixture is not None:
        commit = args.official_commit or official_commit(repo)
        write_fixture(tokenizer_cls, head_cls, args.write_fixture, args.seed, commit)
        print(f"wrote {args.write_fixture}")
        return 0
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
