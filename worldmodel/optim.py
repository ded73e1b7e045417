"""AdamW with the usual exemptions from weight decay, shared by every trainer of a world model."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

NORMS = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def undecayed_parameters(model: nn.Module) -> set[int]:
    """ids of the biases and of the embedding and norm weights in ``model`` (a VQ codebook is
    an ``nn.Embedding``; ``LlamaRMSNorm`` is matched by name)."""
    out = set()
    for module in model.modules():
        whole = isinstance(module, NORMS) or type(module).__name__.endswith("RMSNorm")
        out |= {id(p) for name, p in module.named_parameters(recurse=False) if whole or name == "bias"}
    return out


def adamw(params: Iterable[nn.Parameter], model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable ``params`` of ``model``. With weight decay, biases and the weights
    of embeddings and norms form a second group without it (official iVideoGPT ``embed_no_wd``);
    without, one group."""
    params = [p for p in params if p.requires_grad]
    groups: list = params
    if weight_decay > 0:
        undecayed = undecayed_parameters(model)
        groups = [{"params": [p for p in params if id(p) not in undecayed]},
                  {"params": [p for p in params if id(p) in undecayed], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
