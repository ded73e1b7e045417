"""World models by config: the loop sees only the interface of worldmodel/interface.py."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from omegaconf import OmegaConf

from worldmodel.interface import WorldModel, WorldModelConfigError
from worldmodel.registry import load_pretrained, pretrained_model_type, world_model_class


def build_world_model(wm_cfg: Mapping[str, Any], image_size: int, action_dim: int,
                      device: torch.device) -> WorldModel | None:
    """The world model that ``world_model=<name>`` asks for (None for ``none``), built fresh or
    loaded from ``world_model.pretrained``, and checked against the env. A loaded model keeps
    the checkpoint's architecture and takes the run's ``run_settings`` (sampling, training, ...)
    from ``world_model.model``."""
    name = wm_cfg["name"]
    if name == "none":
        return None
    config = OmegaConf.to_container(wm_cfg["model"], resolve=True) if OmegaConf.is_config(wm_cfg["model"]) \
        else dict(wm_cfg["model"])
    pretrained = wm_cfg.get("pretrained")
    if pretrained:
        held = pretrained_model_type(pretrained)
        if held != name:
            raise WorldModelConfigError(f"world_model={name} but {pretrained} holds a '{held}' model; "
                                        f"set world_model={held}.")
        model = load_pretrained(pretrained, run_config=config, action_dim=action_dim)
        print(f"[world model] loaded {name} weights from {pretrained}; from this run's config: "
              f"{', '.join(sorted(world_model_class(name).run_overrides(config))) or 'nothing'}")
    else:
        model = world_model_class(name).from_config({**config, "image_size": image_size, "action_dim": action_dim})
    if model.image_size != image_size or model.action_dim != action_dim:
        raise WorldModelConfigError(
            f"the world model works on {model.image_size}x{model.image_size} frames with {model.action_dim}-dim "
            f"actions, but the env gives {image_size}x{image_size} frames and {action_dim}-dim actions. "
            "Set task.image_size to match, or train / import a world model for this env.")
    return model.to(device)
