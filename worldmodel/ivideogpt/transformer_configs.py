"""Size presets of iVideoGPT's Llama transformer.

``small`` and ``medium`` match the official thuml/iVideoGPT ``configs/llama/config*.json``
(138M / 436M parameters with the 2 x 8192-code vocabulary), so their checkpoints load by a key
mapping. ``tiny`` is for tests and CPU runs. The vocabulary size is not part of a preset: it
follows from the tokenizer (context codes + future codes + 2 separators).
"""
from __future__ import annotations

from typing import Any

# Keys a preset may set; everything else about the LlamaConfig is fixed by the architecture.
TRANSFORMER_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "max_position_embeddings", "rms_norm_eps",
                    "attention_dropout", "initializer_range")

_COMMON = {"max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "attention_dropout": 0.0,
           "initializer_range": 0.02}

TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {**_COMMON, "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
             "num_key_value_heads": 4, "intermediate_size": 256},
    "small": {**_COMMON, "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
              "num_key_value_heads": 12, "intermediate_size": 3072},
    "medium": {**_COMMON, "num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16,
               "num_key_value_heads": 16, "intermediate_size": 4096},
}


ROPE_THETA = 10000.0  # Llama's rotary base (the LlamaConfig default)
ROPE_SCALING_TYPES = ("yarn",)


def rope_scaling_config(scaling: dict[str, Any], max_positions: int) -> dict[str, Any]:
    """Normalise ``rope_scaling`` = {type: yarn, factor: f, original_max_position_embeddings: n
    (default: the preset's max_position_embeddings)} -- context extension by YaRN RoPE scaling,
    the third long-context baseline next to VRAG and the history buffer (worldmodel/memory)."""
    scaling = dict(scaling)
    kind = scaling.pop("type", scaling.pop("rope_type", "yarn"))
    if kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling type '{kind}' is not supported; use one of {ROPE_SCALING_TYPES}.")
    factor = float(scaling.pop("factor", 0.0))
    if factor <= 1.0:
        raise ValueError(f"rope_scaling.factor must be > 1 (the context extension ratio), got {factor}.")
    original = int(scaling.pop("original_max_position_embeddings", max_positions))
    extra = sorted(set(scaling) - {"beta_fast", "beta_slow", "attention_factor"})
    if extra:
        raise ValueError(f"unknown rope_scaling keys {extra}; allowed: type, factor, "
                         "original_max_position_embeddings, beta_fast, beta_slow, attention_factor.")
    return {"type": kind, "factor": factor, "original_max_position_embeddings": original, **scaling}


def llama_rope_parameters(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """``rope_scaling_config`` output -> transformers' ``LlamaConfig(rope_parameters=...)``."""
    if not scaling:
        return None
    params = {k: v for k, v in scaling.items() if k != "type"}
    return {"rope_type": scaling["type"], "rope_theta": ROPE_THETA, **params}


def transformer_config(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Resolve a preset name, or a dict ``{"size": name, **overrides}``, or a full explicit dict,
    into the Llama hyper-parameters (``TRANSFORMER_KEYS``, plus ``rope_scaling`` when set: then
    max_position_embeddings = original_max_position_embeddings x factor)."""
    if isinstance(spec, str):
        spec = {"size": spec}
    spec = dict(spec)
    scaling = spec.pop("rope_scaling", None)
    size = spec.pop("size", None)
    if size is not None:
        if size not in TRANSFORMER_PRESETS:
            raise ValueError(f"unknown transformer size '{size}'; choose one of "
                             f"{sorted(TRANSFORMER_PRESETS)} or give the keys {TRANSFORMER_KEYS} explicitly.")
        config = dict(TRANSFORMER_PRESETS[size])
    else:
        config = dict(_COMMON)
    unknown = sorted(set(spec) - set(TRANSFORMER_KEYS))
    if unknown:
        raise ValueError(f"unknown transformer config keys {unknown}; allowed: {TRANSFORMER_KEYS} and 'size'.")
    config.update(spec)
    missing = [k for k in TRANSFORMER_KEYS if k not in config]
    if missing:
        raise ValueError(f"transformer config lacks {missing}: give a 'size' preset "
                         f"({sorted(TRANSFORMER_PRESETS)}) or set them explicitly.")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError(f"hidden_size {config['hidden_size']} is not divisible by "
                         f"num_attention_heads {config['num_attention_heads']}.")
    if scaling:
        config["rope_scaling"] = rope_scaling_config(scaling, config["max_position_embeddings"])
        config["max_position_embeddings"] = int(config["rope_scaling"]["original_max_position_embeddings"]
                                                * config["rope_scaling"]["factor"])
    return config
