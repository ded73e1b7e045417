"""Vid2World's causalisation: turn a non-causal video diffusion model into a causal one.

Temporal attention becomes causal by its mask alone (same weights). A temporal convolution
with symmetric taps (w0, w1, w2) on frames (t-1, t, t+1) must move to taps on (t-2, t-1, t);
three ways to transfer its weights:

- masked:        (0, w0, w1)            drop the future tap
- extrapolative: (0, w0 - w2, w1 + 2 w2) replace x_{t+1} by its linear extrapolation
                                         2 x_t - x_{t-1}: exact for signals linear in time
- shift:         (w0, w1, w2)            keep the kernel, delayed by one frame
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from worldmodel.vid2world.backbone import TemporalAttention, TemporalConv, VideoUNet
from worldmodel.vid2world.configs import TRANSFER_METHODS


def causal_kernel(weight: torch.Tensor, method: str) -> torch.Tensor:
    """Non-causal taps [..., 3] on (t-1, t, t+1) -> causal taps [..., 3] on (t-2, t-1, t)."""
    if weight.shape[-1] != 3:
        raise ValueError(f"expected a temporal kernel of size 3, got shape {tuple(weight.shape)}.")
    w0, w1, w2 = weight.unbind(-1)
    zero = torch.zeros_like(w0)
    if method == "masked":
        taps = (zero, w0, w1)
    elif method == "extrapolative":
        taps = (zero, w0 - w2, w1 + 2 * w2)
    elif method == "shift":
        taps = (w0, w1, w2)
    else:
        raise ValueError(f"unknown weight-transfer method '{method}'; choose one of {TRANSFER_METHODS}.")
    return torch.stack(taps, dim=-1)


@torch.no_grad()
def causalize_module(module: nn.Module, method: str) -> nn.Module:
    """A causal deep copy of any module built from ``TemporalConv``/``TemporalAttention``."""
    if method not in TRANSFER_METHODS:
        raise ValueError(f"unknown weight-transfer method '{method}'; choose one of {TRANSFER_METHODS}.")
    causal = copy.deepcopy(module)
    for layer in causal.modules():
        if isinstance(layer, TemporalConv):
            if layer.causal:
                raise ValueError("the model is already causal; causalize a non-causal checkpoint.")
            layer.conv.weight.copy_(causal_kernel(layer.conv.weight, method))
            layer.causal = True
        elif isinstance(layer, TemporalAttention):
            layer.causal = True
    for layer in causal.modules():
        if isinstance(layer, VideoUNet):
            layer.cfg.causal = True  # the deep copy owns its cfg
    return causal


def causalize(model: nn.Module, method: str = "extrapolative") -> nn.Module:
    """A causal copy of a non-causal ``Vid2World`` (or bare ``VideoUNet``); the input is unchanged."""
    from worldmodel.vid2world.model import Vid2World  # model imports this module

    if isinstance(model, Vid2World):
        if model.config.causal:
            raise ValueError("the model is already causal; causalize a non-causal checkpoint.")
        config = model.get_config()
        config.update(causal=True, causal_transfer=method)
        causal = Vid2World.from_config(config)
        causal.to(model.device)
        # every weight and buffer (reward head, key embedding and dynamics, ...), the backbone's causalised
        state = model.state_dict()
        state.update({f"backbone.{k}": v for k, v in causalize_module(model.backbone, method).state_dict().items()})
        causal.load_state_dict(state)
        return causal
    return causalize_module(model, method)
