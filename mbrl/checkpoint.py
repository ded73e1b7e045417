"""Training checkpoints: one torch file per run, written atomically, read with a clear error."""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbrl.utils import atomic_torch_save

CHECKPOINT_NAME = "last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the message says which file and what to do."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    path = Path(directory) / CHECKPOINT_NAME
    atomic_torch_save(state, path)
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The run's checkpoint, or None if it has none yet."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}). Delete it to continue "
            "this run from its saved episodes with a fresh agent, or start a new run without resume=true.") from None
