"""The one world model the player's sessions share, and the one thread that runs it.

Every call into the model (and into the sessions' simulators) runs on a single worker thread:
that serialises the model exactly as a lock would, and it also keeps each simulator on the thread
that created it, which headless MuJoCo needs (an EGL context is current on one thread only).
"""
from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from mbrl.player.errors import PlayerError
from worldmodel.interface import WorldModel, WorldModelConfigError
from worldmodel.registry import load_pretrained

T = TypeVar("T")
# Sampling keys with a known meaning: key -> (lowest allowed value, integer?).
SAMPLING_RULES = {"temperature": (0.0, False), "top_k": (0, True)}


class WorldModelHost:
    """Loads a checkpoint (``world_model.pretrained``) and runs every model call on one thread."""

    def __init__(self, checkpoint: str | Path, image_size: int, device: str | torch.device = "cpu"):
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.model: WorldModel | None = None
        self.checkpoint = ""
        self.generation = 0  # bumped by every (re)load; sessions re-imagine when it changes
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="player-worker")
        self._worker = self._executor.submit(threading.get_ident).result()
        try:
            self.switch(checkpoint)
        except BaseException:
            self.close()
            raise

    # ----- the worker thread -----
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the worker thread and return its result (re-raising its exception)."""
        if threading.get_ident() == self._worker:
            return fn(*args, **kwargs)
        if self.closed:
            raise PlayerError("the player is shutting down; restart scripts/play.py.")
        return self._executor.submit(fn, *args, **kwargs).result()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)

    # ----- the model -----
    def switch(self, checkpoint: str | Path) -> None:
        """Load another checkpoint; it must work on the same frames and actions as the current one.
        On any fault the current model stays and ``PlayerError`` says why."""
        self.call(self._load, checkpoint)

    def _load(self, checkpoint: str | Path) -> None:
        path = Path(str(checkpoint)).expanduser()
        if not str(checkpoint) or not path.is_dir():
            raise PlayerError(f"world_model.pretrained={checkpoint!s}: no such directory; give a folder "
                              "written by save_pretrained (e.g. a run's checkpoints) or scripts/pretrain.py.")
        try:
            model = load_pretrained(path)
        except (WorldModelConfigError, ValueError, TypeError, KeyError, OSError) as e:
            raise PlayerError(f"cannot load a world model from {path}: {e}") from None
        if model.image_size != self.image_size:
            raise PlayerError(f"{path} holds a model of {model.image_size}x{model.image_size} frames but the "
                              f"task renders {self.image_size}x{self.image_size}; pick the matching task "
                              "or set task.image_size.")
        if self.model is not None and model.action_dim != self.model.action_dim:
            raise PlayerError(f"{path} takes {model.action_dim}-dim actions but this player serves "
                              f"{self.model.action_dim}-dim ones; restart scripts/play.py for that task.")
        self.model = model.to(self.device).eval()
        self.checkpoint = str(path)
        self.generation += 1

    @property
    def horizon(self) -> int | None:
        """Imagined steps the model allows after one reset (iVideoGPT's max_future_frames), if bounded."""
        return self.model.max_horizon

    def info(self) -> dict[str, Any]:
        m = self.model
        return {"type": m.model_type, "checkpoint": self.checkpoint, "image_size": m.image_size,
                "action_dim": m.action_dim, "context_frames": m.context_frames, "horizon": self.horizon,
                "sampling": self.sampling_defaults(), "device": str(self.device),
                "parameters": sum(p.numel() for p in m.parameters())}

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device.type).manual_seed(int(seed))

    # ----- sampling settings -----
    def sampling_defaults(self) -> dict[str, float]:
        """The model's runtime sampling settings (iVideoGPT: temperature, top_k); {} if it has none."""
        sampling = getattr(self.model, "sampling", None)
        return dict(sampling) if isinstance(sampling, dict) else {}

    def check_sampling(self, settings: dict[str, Any]) -> dict[str, float]:
        """Validated settings; a key the model does not have is an error naming the ones it has."""
        known = self.sampling_defaults()
        out = {}
        for key, value in settings.items():
            if key not in known:
                have = sorted(known) or "none (this model samples without settings)"
                raise PlayerError(f"the {self.model.model_type} model has no sampling setting '{key}'; "
                                  f"it has {have}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PlayerError(f"sampling.{key}={value!r} must be a finite number.")
            low, integer = SAMPLING_RULES.get(key, (-math.inf, False))
            if integer and value != int(value):
                raise PlayerError(f"sampling.{key}={value!r} must be an integer.")
            if value < low:
                raise PlayerError(f"sampling.{key}={value!r} must be >= {low}.")
            out[key] = int(value) if integer else float(value)
        return out

    @contextlib.contextmanager
    def sampling(self, settings: dict[str, float]) -> Iterator[None]:
        """Apply one session's sampling settings for the duration of a model call."""
        sampling = getattr(self.model, "sampling", None)
        if not settings or not isinstance(sampling, dict):
            yield
            return
        saved = dict(sampling)
        sampling.update(settings)
        try:
            yield
        finally:
            sampling.clear()
            sampling.update(saved)
