"""Importing official thuml/iVideoGPT checkpoints (worldmodel/ivideogpt/official.py,
scripts/import_ivideogpt.py).

No official weights can be downloaded in tests, so official checkpoints are written here with
random values: the key names and shapes come from an independent description of the official
modules (diffusers' Encoder / Decoder, which the official vae.py copies, plus the official
cross-attention, quantiser and projection layers; transformers' LlamaForCausalLM, which the
official saves as is, or wrapped in HeadModelWithAction). The tiny configs have the official
structure (3 levels, 16x16 / 4x4 tokens at 64x64, 2 context frames) with narrow widths.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from worldmodel.interface import WorldModelConfigError
from worldmodel.ivideogpt.model import IVideoGPT, frames_to_unit
from worldmodel.ivideogpt.official import (TOKENIZER_WEIGHTS, TRANSFORMER_WEIGHTS, ImportReport,
                                           OfficialCheckpointError, import_official, looks_official,
                                           map_tokenizer_state, map_transformer_state, tokenizer_preset_name,
                                           transformer_preset_name, translate_tokenizer_config,
                                           translate_transformer_config)
from worldmodel.registry import load_pretrained

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_FIXTURE = REPO / "tests" / "fixtures" / "ivideogpt_official"
ACTION_DIM = 4
CONTEXT = 2
FUTURE = 3
SIZE = 64

# Official config.json files: the paper's (configs/ctx_vae64, configs/ctx_vae, configs/llama)
# and tiny ones with the same keys.
PAPER64_TOKENIZER = {
    "_class_name": "CompressiveVQModel", "act_fn": "silu", "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "in_channels": 3, "out_channels": 3, "latent_channels": 64, "layers_per_block": 2,
    "lookup_from_codebook": True, "mid_block_add_attention": False, "norm_num_groups": 32, "norm_type": "group",
    "num_vq_embeddings": 8192, "num_dyn_embeddings": 8192, "sample_size": 32, "scaling_factor": 0.18215,
    "vq_embed_dim": None, "force_upcast": True, "context_length": 2, "resolution": 64, "max_att_resolution": 16,
}
PAPER256_TOKENIZER = {k: v for k, v in PAPER64_TOKENIZER.items() if k not in ("resolution", "max_att_resolution")}
PAPER256_TOKENIZER.update(block_out_channels=[128, 256, 256, 512, 768], down_block_types=["DownEncoderBlock2D"] * 5,
                          up_block_types=["UpDecoderBlock2D"] * 5)
SMALL_LLAMA = {
    "architectures": ["LlamaModel"], "bos_token_id": 50256, "eos_token_id": 50256, "hidden_act": "silu",
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072, "max_length": 1024,
    "max_position_embeddings": 1024, "model_type": "llama", "num_attention_heads": 12, "num_hidden_layers": 12,
    "num_key_value_heads": 12, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "float16",
    "use_cache": True, "vocab_size": 8192 + 8192 + 2,
}
TINY_TOKENIZER = {**PAPER64_TOKENIZER, "block_out_channels": [16, 32, 32], "layers_per_block": 1,
                  "norm_num_groups": 8, "latent_channels": 16, "vq_embed_dim": 8,
                  "num_vq_embeddings": 64, "num_dyn_embeddings": 32}  # different sizes catch swaps
TINY_LLAMA = {**SMALL_LLAMA, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 64 + 32 + 2}


# ----- official names and shapes, described independently of our modules -----
def official_tokenizer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names / shapes of the official CompressiveVQModel for an official config."""
    chans, n = cfg["block_out_channels"], len(cfg["block_out_channels"])
    lc, groups = cfg["latent_channels"], cfg["norm_num_groups"]
    dim = cfg["vq_embed_dim"] or lc
    t, p = cfg["context_length"], cfg.get("patch_size", 4)
    res = cfg.get("resolution", 256)
    max_att = cfg.get("max_att_resolution", 32)
    common = dict(block_out_channels=tuple(chans), layers_per_block=cfg["layers_per_block"],
                  norm_num_groups=groups, act_fn=cfg["act_fn"])
    shapes: dict[str, tuple[int, ...]] = {}

    def add(prefix: str, module: torch.nn.Module) -> None:
        shapes.update({f"{prefix}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})

    def cross(prefix: str, c: int, r: int) -> None:
        shapes.update({f"{prefix}.att.in_proj_weight": (3 * c, c), f"{prefix}.att.in_proj_bias": (3 * c,),
                       f"{prefix}.att.out_proj.weight": (c, c), f"{prefix}.att.out_proj.bias": (c,),
                       f"{prefix}.kv_norm.weight": (c,), f"{prefix}.kv_norm.bias": (c,),
                       f"{prefix}.q_norm.weight": (c,), f"{prefix}.q_norm.bias": (c,),
                       f"{prefix}.kv_pos_emb": (t * r * r, c), f"{prefix}.q_pos_emb": (r * r, c)})

    with torch.device("meta"):
        downs, ups = ("DownEncoderBlock2D",) * n, ("UpDecoderBlock2D",) * n
        mid_attention = cfg["mid_block_add_attention"]
        add("encoder", Encoder(3, lc, downs, double_z=False, mid_block_add_attention=mid_attention, **common))
        add("cond_encoder", Encoder(3, lc, downs, double_z=False, mid_block_add_attention=True, **common))
        add("decoder", Decoder(lc, 3, ups, mid_block_add_attention=mid_attention, **common))
        add("cond_decoder", Decoder(lc, 3, ups, mid_block_add_attention=True, **common))
    # cross-attention of the conditional encoder: after every down block whose output side <= max_att
    r, i_att = res, 0
    for i, c in enumerate(chans):
        r = r // 2 if i < n - 1 else r
        if r <= max_att:
            cross(f"cond_encoder.cross_att_blocks.{i_att}", c, r)
            i_att += 1
    # ... of the conditional decoder: after the mid block (16x16 latents), then after up blocks
    rev, r = list(reversed(chans)), 16
    cross("cond_decoder.cross_att_blocks.0", rev[0], r)
    i_att = 1
    for i, c in enumerate(rev):
        r = r * 2 if i < n - 1 else r
        if r <= max_att:
            cross(f"cond_decoder.cross_att_blocks.{i_att}", c, r)
            i_att += 1
    shapes.update({"quant_conv.weight": (dim, lc, 1, 1), "quant_conv.bias": (dim,),
                   "quantize.embedding.weight": (cfg["num_vq_embeddings"], dim),
                   "post_quant_conv.weight": (lc, dim, 1, 1), "post_quant_conv.bias": (lc,),
                   "quant_linear.weight": (dim, lc * p * p), "quant_linear.bias": (dim,),
                   "dynamics_quantize.embedding.weight": (cfg["num_dyn_embeddings"], dim),
                   "post_quant_linear.weight": (lc * p * p, dim), "post_quant_linear.bias": (lc * p * p,)})
    return shapes


def official_transformer_shapes(cfg: dict, action_dim: int = 0, reward: bool = False) -> dict[str, tuple[int, ...]]:
    """A saved LlamaForCausalLM (action-free), or HeadModelWithAction's state dict (action_dim > 0)."""
    not_llama = ("architectures", "torch_dtype", "max_length", "bos_token_id", "eos_token_id")
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in not_llama})
    with torch.device("meta"):
        llm = LlamaForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in llm.state_dict().items()}
    if action_dim == 0:
        return shapes
    d = cfg["hidden_size"]
    shapes = {"llm." + k: s for k, s in shapes.items()}
    shapes.update({"action_linear.weight": (d, action_dim), "action_linear.bias": (d,)})
    if reward:
        shapes.update({"reward_linear.weight": (1, d), "reward_linear.bias": (1,)})
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        v = torch.randn(s, generator=g) * 0.1
        if k.endswith("norm.weight") or k.endswith(("norm1.weight", "norm2.weight", "group_norm.weight",
                                                      "layernorm.weight", "conv_norm_out.weight")):
            v = v + 1.0  # norms near identity keep activations in range
        state[k] = v.to(dtype)
    return state


def write_official(root, tok_state, tf_state, tok_cfg=TINY_TOKENIZER, llama_cfg=TINY_LLAMA, bin_format=False) -> str:
    root = str(root)
    for sub, cfg, state, names in (("tokenizer", tok_cfg, tok_state, TOKENIZER_WEIGHTS),
                                   ("transformer", llama_cfg, tf_state, TRANSFORMER_WEIGHTS)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        with open(os.path.join(root, sub, "config.json"), "w") as f:
            json.dump(cfg, f)
        if bin_format:
            torch.save(state, os.path.join(root, sub, names[1]))
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(root, sub, names[0]))
    return root


@pytest.fixture
def official(tmp_path):
    """An action-free tiny official checkpoint: (directory, tokenizer state, transformer state)."""
    tok = random_state(official_tokenizer_shapes(TINY_TOKENIZER), 1)
    tf = random_state(official_transformer_shapes(TINY_LLAMA), 2)
    return write_official(tmp_path / "official", tok, tf), tok, tf


def outputs(model: IVideoGPT, obs: torch.Tensor, action: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the official tensors feed: codes, decoded frames, logits and rewards."""
    model.eval()
    with torch.no_grad():
        ctx, fut = model.tokenize(frames_to_unit(obs))
        T0, B = model.context_frames, obs.shape[0]
        cache = model.tokenizer.context_cache_from_codes(ctx.view(B, T0, *model.tokenizer.context_token_shape))
        hf, wf = model.tokenizer.future_token_shape
        tf = model.transformer
        hidden = tf.run(tf.embed(model.layout.sequence(ctx, fut), action))
        return {"codes": torch.cat([ctx.flatten(1), fut.flatten(1)], 1),
                "context_frames": model.tokenizer.decode_context(ctx.view(B, T0, *model.tokenizer.context_token_shape)),
                "future_frames": model.tokenizer.decode_future(fut.view(B, -1, hf, wf), cache),
                "logits": tf.logits(hidden),
                "reward": tf.reward(hidden[:, model.layout.reward_positions(fut.shape[1])])}


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (2, CONTEXT + FUTURE, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return obs, torch.rand(2, FUTURE, ACTION_DIM, generator=g) * 2 - 1


# ----- the paper sizes, names and shapes only -----
@pytest.mark.parametrize("tok_cfg,preset,n_tok", [(PAPER64_TOKENIZER, "paper64", 420),
                                                  (PAPER256_TOKENIZER, "paper256", 624)])
def test_paper_checkpoints_map_key_for_key_without_allocating(tok_cfg, preset, n_tok):
    tok_shapes = official_tokenizer_shapes(tok_cfg)
    assert len(tok_shapes) == n_tok
    ours_tok = translate_tokenizer_config(tok_cfg)
    ours_tf = translate_transformer_config(SMALL_LLAMA, ours_tok["context_vocab_size"], ours_tok["future_vocab_size"])
    with torch.device("meta"):
        model = IVideoGPT.from_config({"image_size": ours_tok["image_size"], "action_dim": ACTION_DIM,
                                       "context_frames": 2, "tokenizer": ours_tok, "transformer": ours_tf})
        meta = {k: torch.empty(s) for k, s in tok_shapes.items()}
        mapped = map_tokenizer_state(meta)
        llama = {k: torch.empty(s) for k, s in official_transformer_shapes(SMALL_LLAMA).items()}
        mapped.update(map_transformer_state(llama, 64, ImportReport("meta")))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mapped.items()}
    heads = {k for k in own if k.startswith(("transformer.action_linear.", "transformer.reward_linear."))}
    assert heads == {"transformer.action_linear.weight", "transformer.action_linear.bias",
                     "transformer.reward_linear.weight", "transformer.reward_linear.bias"}
    assert set(got) == set(own) - heads  # exact: nothing missing, nothing unexpected
    assert {k: own[k] for k in got} == got  # no shape changes
    widest = ours_tok["block_out_channels"][-1]
    assert got["tokenizer.cond_decoder.cross_att_blocks.0.kv_pos_emb"] == (2 * 16 * 16, widest)
    assert got["transformer.llm.model.embed_tokens.weight"] == (8192 * 2 + 2, 768)
    # the configs translate to our presets (paper64 / paper256 tokenizer, small transformer)
    assert tokenizer_preset_name(ours_tok) == preset and transformer_preset_name(ours_tf) == "small"
    assert ours_tok["image_size"] == (64 if preset == "paper64" else 256)


# ----- tiny checkpoints, real values -----
def test_action_free_import_is_exact_and_every_part_is_used(official, tmp_path):
    root, tok, tf = official
    assert looks_official(root)
    model, report = import_official(root, action_dim=ACTION_DIM, max_future_frames=FUTURE)
    own = model.state_dict()
    for k, v in tok.items():  # name-by-name equality
        assert torch.equal(own["tokenizer." + k], v), k
    for k, v in tf.items():
        assert torch.equal(own["transformer.llm." + k], v), k
    assert report.loaded == len(tok) + len(tf) and len(own) == len(tok) + len(tf) + 4
    assert report.initialised == ["transformer.action_linear", "transformer.reward_linear"]
    assert "transformer.action_linear" in report.summary()
    for k in ("transformer.action_linear.weight", "transformer.action_linear.bias",
              "transformer.reward_linear.weight", "transformer.reward_linear.bias"):
        assert not own[k].any()

    obs, action = inputs()
    base = outputs(model, obs, action)
    # zero action head: actions change nothing yet (the checkpoint's behaviour is kept)
    assert torch.equal(outputs(model, obs, -action)["logits"], base["logits"])
    # change one official tensor in each part: our outputs change where that tensor is used
    cases = {"decoder.conv_out.weight": "context_frames",
             "cond_decoder.cross_att_blocks.0.kv_pos_emb": "future_frames",
             "post_quant_linear.weight": "future_frames",
             "encoder.conv_in.weight": "codes",
             "cond_encoder.down_blocks.0.resnets.0.conv1.weight": "codes",
             "model.layers.1.mlp.down_proj.weight": "logits",
             "lm_head.weight": "logits"}
    for i, (key, out) in enumerate(cases.items()):
        t_tok, t_tf = dict(tok), dict(tf)
        state = t_tok if key in t_tok else t_tf
        state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(10 + i))
        changed, _ = import_official(write_official(tmp_path / f"changed{i}", t_tok, t_tf),
                                     action_dim=ACTION_DIM, max_future_frames=FUTURE)
        assert not torch.equal(outputs(changed, obs, action)[out], base[out]), key


def test_action_conditioned_checkpoint_loads_its_heads(tmp_path):
    tok = random_state(official_tokenizer_shapes(TINY_TOKENIZER), 1)
    tf = random_state(official_transformer_shapes(TINY_LLAMA, ACTION_DIM, reward=True), 3)
    head_dim = TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"]
    # what older transformers versions saved, and the official auxiliary head
    tf["llm.model.layers.0.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
    tf["action_recon_linear.weight"] = torch.zeros(ACTION_DIM, TINY_LLAMA["hidden_size"])
    root = write_official(tmp_path / "act", tok, tf)
    model, report = import_official(root, max_future_frames=FUTURE)  # action dim from the checkpoint
    assert model.action_dim == ACTION_DIM and report.initialised == []
    own = model.state_dict()
    assert torch.equal(own["transformer.action_linear.weight"], tf["action_linear.weight"])
    assert torch.equal(own["transformer.reward_linear.bias"], tf["reward_linear.bias"])
    assert torch.equal(own["transformer.llm.lm_head.weight"], tf["llm.lm_head.weight"])
    assert any("action_recon_linear" in d for d in report.dropped)
    obs, action = inputs()
    a, b = outputs(model, obs, action), outputs(model, obs, -action)
    assert not torch.equal(a["logits"], b["logits"]) and not torch.equal(a["reward"], b["reward"])

    # another action dimension: a fresh zero action head, reported; everything else loaded
    other, report = import_official(root, action_dim=ACTION_DIM - 1, max_future_frames=FUTURE)
    assert not other.state_dict()["transformer.action_linear.weight"].any()
    assert any("starts at zero" in d for d in report.dropped)
    # an inv_freq of another rope base is refused
    tf["llm.model.layers.0.self_attn.rotary_emb.inv_freq"] *= 0.5
    with pytest.raises(OfficialCheckpointError, match="rope base"):
        import_official(write_official(tmp_path / "rope", tok, tf))


def test_save_import_reload_identical_and_script(official, tmp_path):
    spec = importlib.util.spec_from_file_location("import_ivideogpt", REPO / "scripts" / "import_ivideogpt.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main

    root, tok, tf = official
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}  # older diffusers
    old_tok = {}
    for k, v in tok.items():
        for new, old in old_names.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        old_tok[k] = v.half()
    assert "cond_encoder.mid_block.attentions.0.proj_attn.weight" in old_tok
    half = write_official(tmp_path / "fp16_bin", old_tok, {k: v.half() for k, v in tf.items()},
                          bin_format=True)  # .bin files, fp16 values, old attention names
    out = tmp_path / "imported"
    assert main([half, str(out), "--action-dim", str(ACTION_DIM), "--image-size", "64",
                 "--max-future-frames", str(FUTURE), "--attention-dropout", "0.1"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    reloaded = IVideoGPT.from_pretrained(out)
    assert reloaded.transformer.hparams["attention_dropout"] == 0.1
    for key in ("quantize.embedding.weight", "cond_encoder.mid_block.attentions.0.to_out.0.weight"):
        assert torch.equal(reloaded.state_dict()["tokenizer." + key], tok[key].half().float())
    direct, _ = import_official(half, action_dim=ACTION_DIM, max_future_frames=FUTURE)
    obs, action = inputs()
    a, b = outputs(direct, obs, action), outputs(reloaded, obs, action)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # imagination from both, same seed: same frames and rewards
    rolls = []
    for m in (direct, reloaded):
        state = m.reset(obs[:, :CONTEXT], generator=torch.Generator().manual_seed(0))
        frame, reward, state = m.step(state, action[:, 0])
        rolls.append((frame, reward))
    assert torch.equal(rolls[0][0], rolls[1][0]) and torch.equal(rolls[0][1], rolls[1][1])


def test_from_pretrained_imports_an_official_directory(official, caplog):
    root, tok, tf = official
    with caplog.at_level("WARNING"):
        model = IVideoGPT.from_pretrained(root, action_dim=ACTION_DIM, max_future_frames=FUTURE)
    assert "initialised at zero" in caplog.text and "transformer.action_linear" in caplog.text
    direct, _ = import_official(root, action_dim=ACTION_DIM, max_future_frames=FUTURE)
    a, b = model.state_dict(), direct.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    loaded = load_pretrained(root, action_dim=ACTION_DIM, max_future_frames=FUTURE)  # world_model.pretrained=<dir>
    assert isinstance(loaded, IVideoGPT) and torch.equal(loaded.state_dict()["tokenizer.quant_conv.weight"],
                                                          tok["quant_conv.weight"])
    with pytest.raises(OfficialCheckpointError, match="256x256 frames were asked"):
        IVideoGPT.from_pretrained(root, action_dim=ACTION_DIM, image_size=256)


def test_fewer_context_frames_keep_the_last_position_embeddings(official):
    root, tok, _ = official
    model, report = import_official(root, action_dim=ACTION_DIM, context_frames=1, max_future_frames=FUTURE)
    key = "cond_decoder.cross_att_blocks.0.kv_pos_emb"
    assert torch.equal(model.state_dict()["tokenizer." + key], tok[key][-16 * 16:])
    assert model.context_frames == 1 and any("context frames" in n for n in report.notes)
    with pytest.raises(OfficialCheckpointError, match="context frames"):
        import_official(root, action_dim=ACTION_DIM, context_frames=3)


# ----- bad directories -----
def _edit_json(path, **changes):
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        cfg.pop(k)
    with open(path, "w") as f:
        json.dump(cfg, f)


@pytest.mark.parametrize("breakage,match", [
    ("no_tokenizer", "tokenizer/ is missing"),
    ("no_transformer", "transformer/ is missing"),
    ("garbage_config", "not a readable JSON"),
    ("no_config", "config.json is missing"),
    ("no_weights", "no weights in"),
    ("corrupt_weights", "not a readable weights file"),
    ("resolution_256", "256x256 iVideoGPT checkpoint but 64x64"),
    ("vocab", "vocab_size is 99"),
    ("codebook_weights", "quantize.embedding.weight has shape"),
    ("plain_vq", "not iVideoGPT's compressive tokenizer"),
    ("gpt2", "only Llama"),
    ("rope", "rope_theta"),
    ("not_a_dir", "not a directory"),
    ("act_fn", 'config.json: act_fn is "gelu"; only \'silu\''),  # official cross-attention: always silu
    ("no_hidden_size", "transformer/config.json has no 'hidden_size' entry"),
    ("null_resolution", "tokenizer/config.json: 'resolution' is null, not a positive integer"),
])
def test_bad_directories_get_clear_errors(official, breakage, match):
    root, tok, tf = official
    t, r = os.path.join(root, "tokenizer"), os.path.join(root, "transformer")
    if breakage == "no_tokenizer":
        os.rename(t, t + "_moved")
    elif breakage == "no_transformer":
        os.rename(r, r + "_moved")
    elif breakage == "garbage_config":
        with open(os.path.join(t, "config.json"), "w") as f:
            f.write("{not json")
    elif breakage == "no_config":
        os.remove(os.path.join(r, "config.json"))
    elif breakage == "no_weights":
        os.remove(os.path.join(r, "model.safetensors"))
    elif breakage == "corrupt_weights":
        with open(os.path.join(t, "diffusion_pytorch_model.safetensors"), "wb") as f:
            f.write(b"\x00" * 64)
    elif breakage == "resolution_256":
        _edit_json(os.path.join(t, "config.json"), resolution=None)  # the official default: 256
    elif breakage == "vocab":
        _edit_json(os.path.join(r, "config.json"), vocab_size=99)
    elif breakage == "codebook_weights":  # config says 64 context codes, weights hold 48
        tok = dict(tok, **{"quantize.embedding.weight": tok["quantize.embedding.weight"][:48]})
        save_file(tok, os.path.join(t, "diffusion_pytorch_model.safetensors"))
    elif breakage == "plain_vq":
        _edit_json(os.path.join(t, "config.json"), num_dyn_embeddings=None, context_length=None)
    elif breakage == "gpt2":
        _edit_json(os.path.join(r, "config.json"), model_type="gpt2")
    elif breakage == "rope":
        _edit_json(os.path.join(r, "config.json"), rope_theta=500000.0)
    elif breakage == "not_a_dir":
        root = os.path.join(root, "tokenizer", "config.json")
    elif breakage == "act_fn":
        _edit_json(os.path.join(t, "config.json"), act_fn="gelu")
    elif breakage == "no_hidden_size":
        _edit_json(os.path.join(r, "config.json"), hidden_size=None)
    elif breakage == "null_resolution":
        with open(os.path.join(t, "config.json"), "w") as f:
            json.dump({**TINY_TOKENIZER, "resolution": None}, f)
    with pytest.raises(OfficialCheckpointError, match=match):
        import_official(root, action_dim=ACTION_DIM, image_size=SIZE)


@pytest.mark.parametrize("head_dim", [8, 64, 128])  # 64: the paper's Llama (relative rounding up to 3.7e-3)
def test_bf16_rotary_buffers_are_accepted(head_dim):
    """Older transformers saved inv_freq in the model's dtype: bf16 rounds it by up to 2**-9."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    key = "model.layers.0.self_attn.rotary_emb.inv_freq"
    assert map_transformer_state({key: inv_freq.bfloat16()}, head_dim, ImportReport("bf16")) == {}  # dropped
    with pytest.raises(OfficialCheckpointError, match="rope base"):  # another base is still refused
        map_transformer_state({key: (inv_freq ** 1.1).bfloat16()}, head_dim, ImportReport("base"))


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_import_script_names_an_output_it_cannot_write(official, tmp_path, capsys):
    root, _, _ = official
    taken = tmp_path / "a_file"
    taken.write_text("")
    assert _load_script("import_ivideogpt").main([root, str(taken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {taken}: ") and err.count("\n") == 1


def test_import_script_moves_only_a_verified_checkpoint_into_place(official, tmp_path, monkeypatch):
    root, _, _ = official
    script = _load_script("import_ivideogpt")
    other, _ = import_official(root, action_dim=ACTION_DIM - 1)
    monkeypatch.setattr(IVideoGPT, "from_pretrained", classmethod(lambda cls, directory, **kw: other))
    new, existing = tmp_path / "new", tmp_path / "existing"
    other.save_pretrained(existing)
    (existing / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    for out in (new, existing):
        assert script.main([root, str(out), "--action-dim", str(ACTION_DIM)]) == 2  # reload differs
    assert not new.exists() and {p.name: p.read_bytes() for p in existing.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "official"]  # no temp folders left
    monkeypatch.undo()
    assert script.main([root, str(existing), "--action-dim", str(ACTION_DIM)]) == 0  # into a folder with others
    assert sorted(os.listdir(existing)) == ["config.json", "model.safetensors", "notes.txt"]
    assert IVideoGPT.from_pretrained(existing).action_dim == ACTION_DIM


def test_save_pretrained_never_pairs_a_config_with_other_weights(official, tmp_path, monkeypatch):
    """A failure part way leaves either the old pair or no config.json, never new weights under the
    old config; other files in the folder stay."""
    root, _, _ = official
    old, _ = import_official(root, action_dim=ACTION_DIM)
    new, _ = import_official(root, action_dim=ACTION_DIM - 1)
    out = tmp_path / "ck"
    old.save_pretrained(out)
    (out / "notes.txt").write_text("mine")
    real_replace = os.replace

    def fail_on_config(src, dst):
        if str(dst).endswith("config.json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_config)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(out)
    monkeypatch.undo()
    if (out / "config.json").exists():
        assert IVideoGPT.from_pretrained(out).action_dim == ACTION_DIM
    assert sorted(os.listdir(out)) in (["model.safetensors", "notes.txt"],
                                       ["config.json", "model.safetensors", "notes.txt"])
    new.save_pretrained(out)
    assert IVideoGPT.from_pretrained(out).action_dim == ACTION_DIM - 1 and (out / "notes.txt").read_text() == "mine"


def test_save_pretrained_writes_a_new_folder_whole_or_not_at_all(official, tmp_path, monkeypatch):
    import safetensors.torch

    root, _, _ = official
    new, _ = import_official(root, action_dim=ACTION_DIM)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["official"]  # no half-written folder, no temp folder


@pytest.mark.parametrize("part", ["transformer", "tokenizer"])
def test_a_part_of_an_official_download_points_to_its_parent(official, part):
    from mbrl.world_models import build_world_model

    root, _, _ = official
    folder = os.path.join(root, part)
    message = f"{folder} is the {part}/ folder of an official iVideoGPT checkpoint; pass its parent directory {root}"
    with pytest.raises(WorldModelConfigError, match=re.escape(message)):
        load_pretrained(folder)
    with pytest.raises(WorldModelConfigError, match=re.escape(message)):  # MBPO's world_model.pretrained
        build_world_model({"name": "ivideogpt", "model": {}, "pretrained": folder}, SIZE, ACTION_DIM,
                          torch.device("cpu"))


def test_a_checkpoint_of_an_unknown_model_type_is_refused_without_advice_to_select_it(tmp_path):
    from mbrl.world_models import build_world_model

    (tmp_path / "config.json").write_text(json.dumps(SMALL_LLAMA))  # model_type "llama"
    with pytest.raises(WorldModelConfigError, match="holds a 'llama' model, which is no world model") as e:
        build_world_model({"name": "ivideogpt", "model": {}, "pretrained": str(tmp_path)}, SIZE, ACTION_DIM,
                          torch.device("cpu"))
    assert "world_model=llama" not in str(e.value)


def _run_equivalence_check(repo: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "check_official_equivalence.py"),
                           "--official-repo", str(repo)], capture_output=True, text=True, env=env, timeout=600)


def test_official_equivalence_check_names_a_directory_that_is_no_checkout(tmp_path):
    result = _run_equivalence_check(tmp_path)
    assert result.returncode != 0 and "is not a checkout of thuml/iVideoGPT" in result.stderr


@pytest.mark.skipif(not os.environ.get("IVIDEOGPT_OFFICIAL_REPO"),
                    reason="needs a checkout of thuml/iVideoGPT: set IVIDEOGPT_OFFICIAL_REPO=<dir>")
def test_outputs_equal_the_official_code_given_the_same_weights():
    """Token ids, decoded frames, logits and rewards of the official classes against ours."""
    result = _run_equivalence_check(Path(os.environ["IVIDEOGPT_OFFICIAL_REPO"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUMMARY matches the official code" in result.stdout


def test_outputs_equal_the_stored_outputs_of_the_official_code(tmp_path):
    """The official code's token ids, decoded frames, logits and rewards for a tiny checkpoint, stored by
    ``scripts/check_official_equivalence.py --write-fixture`` (see its fixture.json): the checkpoint is
    written in the official layout (official config.json files and tensor names) and imported with
    import_official, so a layout error that only official checkpoints show (say, the order within a
    future-token patch) fails here without a checkout of thuml/iVideoGPT."""
    meta = json.loads((OFFICIAL_FIXTURE / "fixture.json").read_text())
    weights = _load_script("check_official_equivalence").fixture_weights(meta["weights"])
    for part, names in (("tokenizer", TOKENIZER_WEIGHTS), ("transformer", TRANSFORMER_WEIGHTS)):
        (tmp_path / part).mkdir()
        shutil.copy(OFFICIAL_FIXTURE / part / "config.json", tmp_path / part / "config.json")
        save_file({k[len(part) + 1:]: v for k, v in weights.items() if k.startswith(part + "/")},
                  tmp_path / part / names[0])
    model, report = import_official(tmp_path, action_dim=meta["action_dim"], max_future_frames=meta["future_frames"])
    assert report.loaded == len(weights) and not report.initialised and not report.dropped

    official = load_file(OFFICIAL_FIXTURE / "outputs.safetensors")
    t0, frames, action = meta["context_frames"], official["frames"], official["action"]
    assert official["decoded"].abs().max() <= 1  # ours clamps: a pixel outside would hide a difference
    ours = outputs(model, frames, action[:, t0 - 1:-1])  # the official takes action[t] at frame t for t >= t0 - 1
    with torch.no_grad():
        ids = model.layout.sequence(*model.tokenize(frames_to_unit(frames)))
    hint = " (if fixture_weights changed, regenerate the fixture: see its fixture.json)"
    assert torch.equal(ids, official["token_ids"]), f"{int((ids != official['token_ids']).sum())} ids differ" + hint
    for name, got, want in (("context frames", ours["context_frames"], official["decoded"][:, :t0]),
                            ("future frames", ours["future_frames"], official["decoded"][:, t0:]),
                            ("logits", ours["logits"], official["logits"]),
                            ("reward", ours["reward"], official["reward"])):
        assert got.shape == want.shape, name
        gap = (got - want).abs().max().item()
        assert gap <= 1e-5, f"{name} differ from the official code's by {gap:.3g}" + hint


def test_download_command_in_the_docstring_is_huggingface_hubs_cli():
    """huggingface_hub 2.x (installed here) ships the ``hf`` command and no ``huggingface-cli``."""
    doc = (REPO / "scripts" / "import_ivideogpt.py").read_text().split('"""')[1]
    assert "hf download thuml/ivideogpt-oxe-64-act-free --local-dir pretrained/oxe-64-act-free" in doc
    assert "huggingface-cli" not in doc


# ----- a GAN run, untrusted and malformed files, durable saves -----
def test_an_official_checkpoint_loads_into_a_gan_run_with_a_fresh_discriminator(official, caplog):
    """The official checkpoints hold no discriminator: tokenizer.gan=True trains one from scratch,
    as for a native checkpoint saved without one."""
    root, tok, _ = official
    with caplog.at_level("WARNING"):
        model = load_pretrained(root, run_config={"max_future_frames": FUTURE, "tokenizer": {"size": "tiny",
                                                                                            "gan": True}},
                                action_dim=ACTION_DIM)
    assert model.tokenizer.discriminator is not None and "discriminator" in model.optimizers
    assert "the GAN discriminator starts fresh (tokenizer.gan=True)" in caplog.text
    assert torch.equal(model.state_dict()["tokenizer.quant_conv.weight"], tok["quant_conv.weight"])


def test_official_import_freezes_the_codebooks(official):
    """The transformer was trained on the checkpoint's codes: training.codebooks=auto keeps both."""
    root, _, _ = official
    model = IVideoGPT.from_pretrained(root, action_dim=ACTION_DIM, max_future_frames=FUTURE)
    for quantizer in (model.tokenizer.quantize, model.tokenizer.dynamics_quantize):
        assert not quantizer.embedding.weight.requires_grad and not quantizer.dead_code_reset
    trained = IVideoGPT.from_pretrained(root, action_dim=ACTION_DIM, training={"codebooks": "train"})
    assert trained.tokenizer.quantize.embedding.weight.requires_grad  # control


class _RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_bin_file_that_would_run_code_is_refused_without_running_it(official, tmp_path):
    root, _, tf = official
    marker = tmp_path / "payload_ran"
    folder = os.path.join(root, "transformer")
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save({**tf, "payload": _RunsCodeWhenUnpickled(str(marker))}, os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(OfficialCheckpointError, match=r"pytorch_model\.bin is not a readable weights file"):
        import_official(root, action_dim=ACTION_DIM)
    assert not marker.exists()


@pytest.mark.parametrize("breakage,match", [
    ("bare_tensor", r"pytorch_model\.bin holds a Tensor, not a state dict of named tensors"),
    ("list_weight_map", r"model\.safetensors\.index\.json: 'weight_map' must map tensor names to shard file "
                        r"names; got a list"),
])
def test_weights_files_of_the_wrong_structure_get_clear_errors(official, breakage, match):
    root, _, _ = official
    folder = os.path.join(root, "transformer")
    os.remove(os.path.join(folder, "model.safetensors"))
    if breakage == "bare_tensor":
        torch.save(torch.zeros(3), os.path.join(folder, "pytorch_model.bin"))
    else:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": ["model-00001-of-00001.safetensors"]}, f)
    with pytest.raises(OfficialCheckpointError, match=match):
        import_official(root, action_dim=ACTION_DIM)


@pytest.mark.parametrize("content,match", [
    (b"\xff\xfe{}", "is not valid UTF-8 JSON"),
    (b"3", "holds a JSON int, not an object"),
    (b'{"model_type": ["x"]}', r"'model_type' must be a string naming one of the world models \['ivideogpt'"),
])
def test_a_malformed_native_config_gets_one_clear_error_naming_it(tmp_path, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(WorldModelConfigError, match=match) as e:
        load_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)
    with pytest.raises(WorldModelConfigError, match=match):
        IVideoGPT.from_pretrained(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fsynced files through /proc")
def test_save_pretrained_syncs_both_files_before_renaming_them_in(official, tmp_path, monkeypatch):
    """Else a power loss could leave a renamed-in config.json beside empty weights."""
    root, _, _ = official
    model, _ = import_official(root, action_dim=ACTION_DIM)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", os.fspath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "ck"
    model.save_pretrained(out)  # a new folder: written in a temp folder, renamed in whole
    renamed = events.index(("replace", next(p for kind, p in events if kind == "replace")))
    synced = {os.path.basename(p) for kind, p in events[:renamed] if kind == "fsync"}
    assert {"config.json", "model.safetensors"} <= synced, events
    assert ("fsync", str(tmp_path)) in events[renamed:], events  # the rename itself
    events.clear()
    model.save_pretrained(out)  # an existing folder: each file renamed in from a temp name
    for name in ("model.safetensors", "config.json"):
        temp = str(out / (name + ".tmp"))
        assert events.index(("fsync", temp)) < events.index(("replace", temp)), events
    assert events[-1] == ("fsync", str(out)), events
