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


OFFICIAL_PARTS = ("tokenizer", "transformer")  # the folders of an official thuml/iVideoGPT download


def looks_official(directory: str | os.PathLike) -> bool:
    """True for a directory laid out as an official thuml/iVideoGPT checkpoint (tokenizer/ or
    transformer/ and no config.json of ours). Importing then gives a precise error for whatever is
    missing (worldmodel/ivideogpt/official.py)."""
    d = os.fspath(directory)
    return not os.path.isfile(os.path.join(d, CONFIG_NAME)) and any(
        os.path.isdir(os.path.join(d, part)) for part in OFFICIAL_PARTS)


def _refuse_official_part(directory: str) -> None:
    """A clear error for tokenizer/ or transformer/ of an official download given instead of the
    download itself (their config.json files are a diffusers and a Llama config, not ours)."""
    parent, part = os.path.split(os.path.normpath(directory))
    parent = parent or "."
    if part in OFFICIAL_PARTS and not os.path.isfile(os.path.join(parent, CONFIG_NAME)) and all(
            os.path.isdir(os.path.join(parent, p)) for p in OFFICIAL_PARTS):
        raise WorldModelConfigError(f"{directory} is the {part}/ folder of an official iVideoGPT checkpoint; "
                                    f"pass its parent directory {parent}.")


def pretrained_model_type(directory: str | os.PathLike) -> str:
    """The registry name of the model a checkpoint directory holds (or a pretraining output folder,
    ``model_directory``): its config.json's ``model_type``, or ``ivideogpt`` for an official
    thuml/iVideoGPT download (tokenizer/ + transformer/, no config.json). A ``model_type`` that
    names no world model here is refused."""
    d = model_directory(directory)
    if looks_official(d):
        return "ivideogpt"
    try:
        model_type = read_config(d)["model_type"]
    except WorldModelConfigError:
        _refuse_official_part(d)
        raise
    if model_type not in WORLD_MODELS:
        _refuse_official_part(d)
        raise WorldModelConfigError(
            f"{d} holds a '{model_type}' model, which is no world model of this toolkit "
            f"({', '.join(sorted(WORLD_MODELS))}): give a save_pretrained directory, a scripts/pretrain.py "
            "output or an official thuml/iVideoGPT download.")
    return model_type


def load_pretrained(directory: str | os.PathLike, run_config: Mapping[str, Any] | None = None,
                    **overrides: Any) -> WorldModel:
    """Load any world model saved with ``save_pretrained``, whatever its type; an official
    thuml/iVideoGPT download is imported on the fly. ``run_config``: a run's model config, whose
    ``run_settings`` (sampling, training, ...) replace the checkpoint's."""
    directory = model_directory(directory)
    cls = world_model_class(pretrained_model_type(directory))
    settings = cls.run_overrides(run_config) if run_config is not None else {}
    return cls.from_pretrained(directory, **settings, **overrides)
