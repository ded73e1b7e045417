"""Names of world models -> classes, imported lazily so a model's extras load only when used."""
from __future__ import annotations

import importlib
import os
from typing import Any, Mapping

from worldmodel.interface import CONFIG_NAME, WorldModel, WorldModelConfigError, read_config

WORLD_MODELS = {
    "ivideogpt": "worldmodel.ivideogpt.model:IVideoGPT",
    "vid2world": "worldmodel.vid2world.model:Vid2World",
}


def world_model_class(name: str) -> type[WorldModel]:
    if name not in WORLD_MODELS:
        raise WorldModelConfigError(
            f"unknown world model '{name}'; choose one of {sorted(WORLD_MODELS)} (or 'none').")
    module, attr = WORLD_MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


PRETRAINING_MODEL_DIR = "model"  # where scripts/pretrain.py puts the trained model in its output folder


def model_directory(directory: str | os.PathLike) -> str:
    """``directory``, or its ``model/`` when it is a pretraining output folder (scripts/pretrain.py's
    ``out``), so that either can be given wherever a saved world model is loaded."""
    d = os.fspath(directory)
    inner = os.path.join(d, PRETRAINING_MODEL_DIR)
    if not os.path.isfile(os.path.join(d, CONFIG_NAME)) and os.path.isfile(os.path.join(inner, CONFIG_NAME)):
        return inner
    return d


def pretrained_model_type(directory: str | os.PathLike) -> str:
    """The registry name of the model a checkpoint directory holds (or a pretraining output folder,
    ``model_directory``): its config.json's ``model_type``, or ``ivideogpt`` for an official
    thuml/iVideoGPT download (tokenizer/ + transformer/, no config.json)."""
    d = model_directory(directory)
    if not os.path.isfile(os.path.join(d, CONFIG_NAME)) and (
            os.path.isdir(os.path.join(d, "tokenizer")) or os.path.isdir(os.path.join(d, "transformer"))):
        return "ivideogpt"
    return read_config(d)["model_type"]


def load_pretrained(directory: str | os.PathLike, run_config: Mapping[str, Any] | None = None,
                    **overrides: Any) -> WorldModel:
    """Load any world model saved with ``save_pretrained``, whatever its type; an official
    thuml/iVideoGPT download is imported on the fly. ``run_config``: a run's model config, whose
    ``run_settings`` (sampling, training, ...) replace the checkpoint's."""
    directory = model_directory(directory)
    cls = world_model_class(pretrained_model_type(directory))
    settings = cls.run_overrides(run_config) if run_config is not None else {}
    return cls.from_pretrained(directory, **settings, **overrides)
