"""Import the official thuml/iVideoGPT checkpoints (Hugging Face layout) into ``IVideoGPT``.

An official checkpoint directory (e.g. a download of ``thuml/ivideogpt-oxe-64-act-free``)::

    <dir>/tokenizer/config.json          diffusers config of the official ``CompressiveVQModel``
    <dir>/tokenizer/diffusion_pytorch_model.safetensors   (or .bin)
    <dir>/transformer/config.json        a ``LlamaConfig``
    <dir>/transformer/model.safetensors  (or pytorch_model.bin, or shards with an index .json)

Key mapping, official -> ours (the structures are the same, so it is a renaming):

    tokenizer   <k>                                   -> tokenizer.<k>
    transformer <k>   (action-free: a saved ``LlamaForCausalLM``)      -> transformer.llm.<k>
                llm.<k>  (action-conditioned: ``HeadModelWithAction``) -> transformer.llm.<k>
                action_linear.* / reward_linear.*     -> transformer.action_linear.* / .reward_linear.*

Dropped on the way, each reported: ``*.rotary_emb.inv_freq`` buffers that older transformers
versions saved (recomputed here; checked against the rope base first) and the auxiliary
``action_recon_linear`` head. Old diffusers attention names (``query``, ``key``, ``value``,
``proj_attn``) are renamed as diffusers itself does. Heads the checkpoint lacks start at zero:
the action projection of an action-free model as in the official code, and the reward head
unless it was trained with rewards (the official initialises that one randomly; zero here, so
that the imported model predicts exactly what the checkpoint did).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from worldmodel.interface import CONFIG_NAME, WorldModelConfigError
from worldmodel.ivideogpt.tokenizer_configs import PRESETS as TOKENIZER_PRESETS
from worldmodel.ivideogpt.tokenizer_configs import tokenizer_config
from worldmodel.ivideogpt.transformer import NUM_SPECIAL_TOKENS
from worldmodel.ivideogpt.transformer_configs import TRANSFORMER_KEYS, TRANSFORMER_PRESETS
from worldmodel.registry import looks_official  # noqa: F401  (re-exported: the model's loader asks it)

if TYPE_CHECKING:
    from worldmodel.ivideogpt.model import IVideoGPT

TOKENIZER_DIR = "tokenizer"
TRANSFORMER_DIR = "transformer"
TOKENIZER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEX_SUFFIX = ".index.json"  # sharded checkpoints: <weights name>.index.json -> {"weight_map": ...}

# Defaults of the official ``CompressiveVQModel.__init__``: a saved config.json may omit them
# (the 256x256 config has no ``resolution``, so 256 it is).
OFFICIAL_TOKENIZER_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 3, "num_vq_embeddings": 256, "norm_num_groups": 32,
    "vq_embed_dim": None, "norm_type": "group", "mid_block_add_attention": True,
    "num_dyn_embeddings": 256, "context_length": 1, "max_att_resolution": 32, "resolution": 256,
    "patch_size": 4,
}
DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
# Hard-coded in the official conditional_vae.py / compressive_vq_model.py (not in its config). Its
# cross-attention blocks also always use silu, while ours follow act_fn: other act_fn are refused.
OFFICIAL_FIXED_TOKENIZER = {"cond_mid_block_add_attention": True, "cross_attn_heads": 4,
                            "cross_attn_dropout": 0.1, "cross_attn_norm_groups": 32}
TOKENIZER_ARCH_KEYS = ("image_size", "in_channels", "block_out_channels", "layers_per_block",
                       "norm_num_groups", "act_fn", "latent_channels", "codebook_dim",
                       "context_vocab_size", "future_vocab_size", "context_frames", "patch_size",
                       "max_att_resolution", "mid_block_add_attention", *OFFICIAL_FIXED_TOKENIZER)

# Defaults of transformers' LlamaConfig at the official's version (4.32), for keys a saved
# config.json may omit.
LLAMA_DEFAULTS: dict[str, Any] = {
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "initializer_range": 0.02,
    "attention_dropout": 0.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "rope_scaling": None, "rope_theta": 10000.0,
}
ROPE_THETA = 10000.0  # the only rope base our transformer builds (transformers' default)
INV_FREQ_RTOL = 1e-3  # saved inv_freq buffers match within this, or 2 eps of their dtype (bf16) if larger

# Old diffusers attention parameter names (the checkpoint conversion diffusers itself applies).
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")


class OfficialCheckpointError(WorldModelConfigError):
    """A directory is not a usable official iVideoGPT checkpoint, or does not fit the request."""


@dataclass
class ImportReport:
    """What an import did, for the message the user sees."""

    source: str
    tokenizer_preset: str | None = None
    transformer_preset: str | None = None
    loaded: int = 0  # tensors copied from the checkpoint
    initialised: list[str] = field(default_factory=list)  # our parameters that start at zero
    dropped: list[str] = field(default_factory=list)  # official tensors not used, with the reason
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"imported official iVideoGPT checkpoint {self.source}: {self.loaded} tensors "
                 f"(tokenizer {self.tokenizer_preset or 'custom size'}, "
                 f"transformer {self.transformer_preset or 'custom size'})"]
        if self.initialised:
            lines.append(f"  initialised at zero (not in the checkpoint): {', '.join(self.initialised)}")
        lines += [f"  dropped: {d}" for d in self.dropped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----- detection and configs -----
def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise OfficialCheckpointError(f"{path} is missing: an official iVideoGPT checkpoint has the {what}'s "
                                      f"config there (download the whole Hugging Face repository, e.g. "
                                      f"thuml/ivideogpt-oxe-64-act-free).")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OfficialCheckpointError(f"{path} is not a readable JSON config ({e}).") from None
    if not isinstance(config, dict):
        raise OfficialCheckpointError(f"{path} holds a {type(config).__name__}, not a JSON object.")
    return config


def read_official_configs(directory: str | os.PathLike) -> tuple[dict, dict]:
    """(tokenizer config, Llama config) of an official checkpoint, with clear errors."""
    d = os.fspath(directory)
    if not os.path.isdir(d):
        raise OfficialCheckpointError(f"{d} is not a directory.")
    for sub in (TOKENIZER_DIR, TRANSFORMER_DIR):
        if not os.path.isdir(os.path.join(d, sub)):
            raise OfficialCheckpointError(
                f"{d} is not an iVideoGPT checkpoint: {sub}/ is missing (expected tokenizer/ and "
                "transformer/ as in the Hugging Face repository thuml/ivideogpt-oxe-64-act-free).")
    tok = _read_json(os.path.join(d, TOKENIZER_DIR, CONFIG_NAME), "tokenizer")
    llama = _read_json(os.path.join(d, TRANSFORMER_DIR, CONFIG_NAME), "transformer")
    return tok, llama


def _field(config: dict[str, Any], key: str, source: str, kind: str = "int") -> Any:
    """``config[key]``, checked to be of ``kind``: "int" (a positive integer), "int?" (one or
    null) or "number" (a non-negative number). Otherwise an error naming ``source`` and ``key``,
    not a TypeError deep in the model."""
    if key not in config:
        raise OfficialCheckpointError(f"{source} has no '{key}' entry: the checkpoint's config is incomplete "
                                      "(download the checkpoint again).")
    value = config[key]
    if kind == "int?" and value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and (value >= 0 if kind == "number" else isinstance(value, int) and value > 0)
    if not ok:
        want = "a non-negative number" if kind == "number" else "a positive integer"
        raise OfficialCheckpointError(f"{source}: '{key}' is {json.dumps(value)}, not {want} (the checkpoint's "
                                      "config is damaged; download it again).")
    return value


def translate_tokenizer_config(official: dict, image_size: int | None = None, context_frames: int | None = None,
                               source: str = f"{TOKENIZER_DIR}/{CONFIG_NAME}") -> dict[str, Any]:
    """Official ``CompressiveVQModel`` config -> our full tokenizer config.

    ``image_size`` / ``context_frames``, when given, are what the caller needs: a checkpoint of
    another resolution is refused; fewer context frames are allowed (the official trims its
    context position embeddings the same way), more are refused. ``source``: the file, for errors."""
    o = {**OFFICIAL_TOKENIZER_DEFAULTS, **official}
    if "num_dyn_embeddings" not in official or "context_length" not in official:
        raise OfficialCheckpointError(
            "the tokenizer config has no num_dyn_embeddings / context_length: it is a plain VQ "
            "tokenizer, not iVideoGPT's compressive tokenizer (CompressiveVQModel).")
    for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "num_vq_embeddings",
                "norm_num_groups", "num_dyn_embeddings", "context_length", "max_att_resolution", "resolution",
                "patch_size"):
        _field(o, key, source)
    _field(o, "vq_embed_dim", source, "int?")
    chans = o["block_out_channels"]
    if not isinstance(chans, list) or not chans or not all(type(c) is int and c > 0 for c in chans):
        raise OfficialCheckpointError(f"{source}: 'block_out_channels' is {json.dumps(chans)}, not a list of "
                                      "positive integers (the checkpoint's config is damaged; download it again).")
    if o["act_fn"] != "silu":  # the official cross-attention blocks use silu whatever act_fn says
        raise OfficialCheckpointError(
            f"{source}: act_fn is {json.dumps(o['act_fn'])}; only 'silu' (every released checkpoint) can be "
            "imported: the official cross-attention blocks always use silu, ours follow act_fn.")
    downs = list(o.get("down_block_types", [DOWN_BLOCK] * len(chans)))
    ups = list(o.get("up_block_types", [UP_BLOCK] * len(chans)))
    if downs != [DOWN_BLOCK] * len(chans) or ups != [UP_BLOCK] * len(chans):
        raise OfficialCheckpointError(
            f"unsupported tokenizer blocks {downs} / {ups}: expected {len(chans)} x {DOWN_BLOCK} / {UP_BLOCK}.")
    if o["norm_type"] != "group":
        raise OfficialCheckpointError(f"unsupported tokenizer norm_type '{o['norm_type']}' (only 'group').")
    if o["out_channels"] != o["in_channels"]:
        raise OfficialCheckpointError(
            f"tokenizer in_channels {o['in_channels']} != out_channels {o['out_channels']}: not supported.")
    resolution = o["resolution"]
    if image_size is not None and image_size != resolution:
        raise OfficialCheckpointError(
            f"this is a {resolution}x{resolution} iVideoGPT checkpoint but {image_size}x{image_size} frames "
            f"were asked for: use a {image_size}x{image_size} checkpoint (e.g. thuml/ivideogpt-oxe-64-act-free "
            f"for 64x64) or set the image size to {resolution}.")
    official_context = o["context_length"]
    if context_frames is not None and context_frames > official_context:
        raise OfficialCheckpointError(
            f"the checkpoint's tokenizer was trained with {official_context} context frames; "
            f"{context_frames} cannot be imported (use context_frames <= {official_context}).")
    arch = {
        "image_size": resolution, "in_channels": o["in_channels"], "block_out_channels": chans,
        "layers_per_block": o["layers_per_block"], "norm_num_groups": o["norm_num_groups"],
        "act_fn": o["act_fn"], "latent_channels": o["latent_channels"],
        "codebook_dim": o["vq_embed_dim"] if o["vq_embed_dim"] is not None else o["latent_channels"],
        "context_vocab_size": o["num_vq_embeddings"], "future_vocab_size": o["num_dyn_embeddings"],
        "context_frames": context_frames if context_frames is not None else official_context,
        "patch_size": o["patch_size"], "max_att_resolution": o["max_att_resolution"],
        "mid_block_add_attention": bool(o["mid_block_add_attention"]), **OFFICIAL_FIXED_TOKENIZER,
    }
    return tokenizer_config("paper64", **arch)


def tokenizer_preset_name(config: dict[str, Any]) -> str | None:
    """The tokenizer preset whose architecture ``config`` has (context length aside), if any."""
    keys = [k for k in TOKENIZER_ARCH_KEYS if k != "context_frames"]
    for name, preset in TOKENIZER_PRESETS.items():
        if all(preset[k] == config[k] for k in keys):
            return name
    return None


def translate_transformer_config(llama: dict, context_vocab: int, future_vocab: int,
                                 source: str = f"{TRANSFORMER_DIR}/{CONFIG_NAME}") -> dict[str, Any]:
    """Official Llama config.json -> our transformer hyper-parameters (``TRANSFORMER_KEYS``).

    The vocabulary must be the tokenizer's (context codes + future codes + 2 separators);
    features our transformer does not build (another rope base, rope scaling, biases, tied
    embeddings, another activation) are refused rather than silently changed. ``source``: the
    file, for errors."""
    if llama.get("model_type", "llama") != "llama":
        raise OfficialCheckpointError(
            f"the transformer is a '{llama.get('model_type')}' model; only Llama iVideoGPT transformers "
            "(every released checkpoint) are supported.")
    c = {**LLAMA_DEFAULTS, **llama}
    want_vocab = context_vocab + future_vocab + NUM_SPECIAL_TOKENS
    if c.get("vocab_size") != want_vocab:
        raise OfficialCheckpointError(
            f"the transformer's vocab_size is {c.get('vocab_size')} but the tokenizer's codebooks give "
            f"{context_vocab} + {future_vocab} + {NUM_SPECIAL_TOKENS} = {want_vocab}: the tokenizer and "
            "transformer are not from the same checkpoint.")
    rope_theta = c["rope_theta"]
    if isinstance(c.get("rope_parameters"), dict):  # transformers >= 5 writes the rope settings here
        rope_theta = c["rope_parameters"].get("rope_theta", rope_theta)
        if c["rope_parameters"].get("rope_type", "default") != "default":
            c["rope_scaling"] = c["rope_parameters"]
    rope_theta = _field({"rope_theta": rope_theta}, "rope_theta", source, "number")
    unsupported = {
        "hidden_act": (c["hidden_act"], "silu"), "tie_word_embeddings": (c["tie_word_embeddings"], False),
        "attention_bias": (c["attention_bias"], False), "mlp_bias": (c["mlp_bias"], False),
        "rope_scaling": (c["rope_scaling"], None), "rope_theta": (float(rope_theta), ROPE_THETA),
    }
    bad = {k: got for k, (got, want) in unsupported.items() if got != want}
    if bad:
        raise OfficialCheckpointError(f"the transformer config has settings our Llama does not build: {bad}.")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "max_position_embeddings"):
        _field(c, key, source)
    for key in ("rms_norm_eps", "attention_dropout", "initializer_range"):
        _field(c, key, source, "number")
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    if hidden % heads:
        raise OfficialCheckpointError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads "
                                      f"{heads} (the checkpoint's config is damaged).")
    if c.get("head_dim") not in (None, hidden // heads):
        raise OfficialCheckpointError(f"head_dim {c['head_dim']} != hidden_size / heads = {hidden // heads}.")
    kv_heads = _field({"num_key_value_heads": None, **c}, "num_key_value_heads", source, "int?")
    out = {"num_key_value_heads": kv_heads or heads}
    out.update({key: c[key] for key in TRANSFORMER_KEYS if key not in out})
    return out


def transformer_preset_name(config: dict[str, Any]) -> str | None:
    keys = [k for k in TRANSFORMER_KEYS if k != "attention_dropout"]
    for name, preset in TRANSFORMER_PRESETS.items():
        if all(preset[k] == config[k] for k in keys):
            return name
    return None


# ----- weights -----
def _load_file(path: str) -> dict[str, torch.Tensor]:
    """The tensors of one weights file. A ``.bin`` is unpickled with ``weights_only``: a pickle
    that would run code or build other objects is refused, not executed."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many types
        raise OfficialCheckpointError(f"{path} is not a readable weights file ({e}).") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise OfficialCheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors: "
                                      "it is no saved model (download the checkpoint again).")
    return state


def load_official_weights(folder: str, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict in ``folder``: the first of ``names`` that exists, or its sharded form."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _load_file(path)
        index = path + INDEX_SUFFIX
        if os.path.isfile(index):
            weight_map = _read_json(index, "sharded weights index").get("weight_map", {})
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise OfficialCheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names; "
                                              f"got a {type(weight_map).__name__} (download the checkpoint again).")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_file(os.path.join(folder, shard)))
            return state
    raise OfficialCheckpointError(f"no weights in {folder}: expected one of {list(names)} (or a sharded "
                                  f"{names[0]}{INDEX_SUFFIX}).")


def _check_inv_freq(key: str, value: torch.Tensor, head_dim: int) -> None:
    """A saved rotary ``inv_freq`` must be the one our rope base gives (it is then recomputed)."""
    want = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    rtol = max(INV_FREQ_RTOL, 2 * torch.finfo(value.dtype).eps) if value.is_floating_point() else INV_FREQ_RTOL
    if value.shape != want.shape or not torch.allclose(value.double(), want, rtol=rtol):
        raise OfficialCheckpointError(
            f"{key} is not the rotary frequency table of rope base {ROPE_THETA:g} with head_dim {head_dim}: "
            "the checkpoint was trained with another positional encoding.")


def map_tokenizer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tokenizer keys -> our ``tokenizer.*`` keys."""
    return {"tokenizer." + _OLD_ATTENTION.sub(lambda m: m.group(1) + _OLD_ATTENTION_NAMES[m.group(2)] + ".", k): v
            for k, v in state.items()}


def map_transformer_state(state: dict[str, torch.Tensor], head_dim: int,
                          report: ImportReport) -> dict[str, torch.Tensor]:
    """Official transformer keys (a saved ``LlamaForCausalLM`` or ``HeadModelWithAction``) -> our
    ``transformer.*`` keys; rotary buffers and the action-reconstruction head are dropped."""
    wrapped = any(k.startswith("llm.") for k in state)
    out, recon = {}, []
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            _check_inv_freq(key, value, head_dim)
            continue
        if key.startswith("action_recon_linear."):
            recon.append(key)
            continue
        if wrapped:
            if key.startswith("llm."):
                out["transformer.llm." + key[len("llm."):]] = value
            else:  # action_linear.*, reward_linear.*, or something unexpected (reported later)
                out["transformer." + key] = value
        else:
            out["transformer.llm." + key] = value
    if recon:
        report.dropped.append(f"{recon} (the auxiliary action-reconstruction head; not used here)")
    return out


# ----- the import -----
def official_action_dim(state: dict[str, torch.Tensor]) -> int:
    """Action dimension of an official transformer state dict (0 for action-free)."""
    weight = state.get("action_linear.weight")
    return 0 if weight is None else int(weight.shape[1])


def import_official(directory: str | os.PathLike, action_dim: int | None = None,
                    image_size: int | None = None, context_frames: int | None = None,
                    **overrides: Any) -> tuple[IVideoGPT, ImportReport]:
    """Build our ``IVideoGPT`` from an official checkpoint directory.

    ``action_dim``: our model's action dimension (None: the checkpoint's, 0 for action-free).
    An action-free checkpoint gets a zero action projection; one whose action head has another
    dimension gets a fresh zero one (reported); with ``tokenizer.gan`` the GAN discriminator, which
    official checkpoints lack, starts fresh (reported). ``image_size`` / ``context_frames``: checked
    against the checkpoint (None: the checkpoint's). ``overrides``: any other ``IVideoGPT``
    config entries (``max_future_frames``, ``sampling``, ``training``; ``tokenizer`` /
    ``transformer`` dicts are merged over the translated ones, e.g. attention_dropout)."""
    from worldmodel.ivideogpt.model import DISCRIMINATOR, IVideoGPT  # noqa: F811 (model.py imports this lazily)

    d = os.fspath(directory)
    report = ImportReport(source=d)
    tok_official, llama_official = read_official_configs(d)
    tok_cfg = translate_tokenizer_config(tok_official, image_size, context_frames,
                                         source=os.path.join(d, TOKENIZER_DIR, CONFIG_NAME))
    tf_cfg = translate_transformer_config(llama_official, tok_cfg["context_vocab_size"],
                                          tok_cfg["future_vocab_size"],
                                          source=os.path.join(d, TRANSFORMER_DIR, CONFIG_NAME))
    report.tokenizer_preset, report.transformer_preset = tokenizer_preset_name(tok_cfg), transformer_preset_name(tf_cfg)
    tok_cfg.update(overrides.pop("tokenizer", None) or {})
    tf_cfg.update(overrides.pop("transformer", None) or {})

    tok_state = load_official_weights(os.path.join(d, TOKENIZER_DIR), TOKENIZER_WEIGHTS)
    tf_state = load_official_weights(os.path.join(d, TRANSFORMER_DIR), TRANSFORMER_WEIGHTS)
    ckpt_action_dim = official_action_dim(tf_state)
    if action_dim is None:
        action_dim = ckpt_action_dim
        if action_dim == 0:
            report.notes.append("action-free checkpoint imported as an action-free model; pass an action "
                                "dimension (e.g. 4 for Meta-World) for MBPO.")

    config = {"image_size": tok_cfg["image_size"], "action_dim": action_dim,
              "context_frames": tok_cfg["context_frames"], "tokenizer": tok_cfg, "transformer": tf_cfg,
              **overrides}
    model = IVideoGPT.from_config(config)
    own = model.state_dict()

    mapped = map_tokenizer_state(tok_state)
    mapped.update(map_transformer_state(tf_state, tf_cfg["hidden_size"] // tf_cfg["num_attention_heads"], report))

    # Fewer context frames than the checkpoint: keep the last rows of the context position
    # embeddings, as the official set_context_length does.
    official_context = int(tok_official.get("context_length", OFFICIAL_TOKENIZER_DEFAULTS["context_length"]))
    if tok_cfg["context_frames"] < official_context:
        for key in [k for k in mapped if k.endswith(".kv_pos_emb")]:
            if key in own and mapped[key].shape[0] > own[key].shape[0]:
                mapped[key] = mapped[key][-own[key].shape[0]:]
        report.notes.append(f"context frames {official_context} -> {tok_cfg['context_frames']}: the context "
                            "position embeddings of the last frames were kept.")

    # The action head: absent, unwanted, or of another dimension.
    head = ("transformer.action_linear.weight", "transformer.action_linear.bias")
    if head[0] in mapped and head[0] not in own:
        report.dropped.append(f"the checkpoint's {ckpt_action_dim}-dim action head "
                              "(an action-free model was asked for)")
        for k in head:
            mapped.pop(k, None)
    elif head[0] in mapped and mapped[head[0]].shape != own[head[0]].shape:
        report.dropped.append(f"the checkpoint's {ckpt_action_dim}-dim action head: this model takes "
                              f"{action_dim}-dim actions, so its action head starts at zero")
        for k in head:
            mapped.pop(k)

    missing = [k for k in own if k not in mapped]
    unexpected = sorted(k for k in mapped if k not in own)
    fresh = [k for k in missing if k.startswith(("transformer.action_linear.", "transformer.reward_linear."))]
    # The official checkpoints hold no GAN discriminator: a run with tokenizer.gan=True trains one
    # from its random start, as from_pretrained does for a native checkpoint saved without one.
    fresh_discriminator = [k for k in missing if k.startswith(DISCRIMINATOR)]
    rest = [k for k in missing if k not in fresh and k not in fresh_discriminator]
    if rest or unexpected:
        raise OfficialCheckpointError(
            f"{d} does not match the architecture its configs describe: {len(rest)} missing tensors "
            f"{rest[:5]}, {len(unexpected)} unexpected {unexpected[:5]} (official names, as mapped).")
    for key, value in mapped.items():
        if value.shape != own[key].shape:
            raise OfficialCheckpointError(
                f"official tensor for {key} has shape {tuple(value.shape)} but the checkpoint's config builds "
                f"{tuple(own[key].shape)}: weights and config.json disagree (codebook / vocabulary size, "
                "resolution or width).")
    state = {k: (mapped[k].to(own[k].dtype) if k in mapped else own[k]) for k in own}
    model.load_state_dict(state, strict=True)
    report.loaded = len(mapped)
    report.initialised = sorted({k.rsplit(".", 1)[0] for k in fresh})
    if fresh_discriminator:
        report.notes.append(f"the GAN discriminator starts fresh (tokenizer.gan={model.tokenizer.config['gan']}).")
    return model, report
