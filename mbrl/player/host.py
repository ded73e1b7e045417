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
        self.device = check_device(torch.device(device))
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
        """Load another checkpoint; it must take the same frames, actions and number of context
        frames as the current one. On any fault the current model stays and ``PlayerError`` says why."""
        self.call(self._load, checkpoint)

    def _load(self, checkpoint: str | Path) -> None:
        path = Path(str(checkpoint)).expanduser()
        if not str(checkpoint) or not path.is_dir():
            raise PlayerError(f"world_model.pretrained={checkpoint!s}: no such directory; give a folder "
                              "written by save_pretrained: a training run's world_model/, scripts/pretrain.py's "
                              "model/, or an imported official checkpoint.")
        try:
            model = load_pretrained(path)
        except (WorldModelConfigError, ValueError, TypeError, KeyError, OSError) as e:
            raise PlayerError(f"cannot load a world model from {path}: {e}") from None
        if model.image_size != self.image_size:
            raise PlayerError(f"{path} holds a model of {model.image_size}x{model.image_size} frames but the "
                              f"task renders {self.image_size}x{self.image_size}; pick the matching task "
                              "or set task.image_size.")
        if self.model is not None:
            self._check_compatible(model, path)
        self.model = model.to(self.device).eval()
        self.checkpoint = str(path)
        self.generation += 1

    def _check_compatible(self, model: WorldModel, path: Path) -> None:
        """Refuse a checkpoint that the sessions' trajectories cannot be re-imagined with: every
        session holds actions of ``action_dim`` values and a start context of ``context_frames``
        real frames, so both must match the loaded model (the frame size matches the task)."""
        current = self.model
        if model.action_dim != current.action_dim:
            raise PlayerError(f"{path} takes {model.action_dim}-dim actions but this player serves "
                              f"{current.action_dim}-dim ones; restart scripts/play.py for that task.")
        if model.context_frames != current.context_frames:
            raise PlayerError(f"{path} starts from {model.context_frames} context frames but the loaded model "
                              f"from {current.context_frames}, and every session's start context holds "
                              f"{current.context_frames}; pick a checkpoint with context_frames="
                              f"{current.context_frames}, or restart scripts/play.py with "
                              f"world_model.pretrained={path}.")

    @property
    def horizon(self) -> int | None:
        """Imagined steps the model allows after one reset (iVideoGPT's max_future_frames), if bounded."""
        return self.model.max_horizon

    def info(self) -> dict[str, Any]:
        m = self.model
        return {"type": m.model_type, "checkpoint": self.checkpoint, "image_size": m.image_size,
                "action_dim": m.action_dim, "context_frames": m.context_frames, "horizon": self.horizon,
                "sampling": self.sampling_defaults(), "sampling_editable": self.editable_sampling(),
                "device": str(self.model_device),
                "parameters": sum(p.numel() for p in m.parameters())}

    @property
    def model_device(self) -> torch.device:
        """The exact device the model's weights are on (``cuda:1``, not just ``cuda``)."""
        param = next(self.model.parameters(), None)
        return self.device if param is None else param.device

    def generator(self, seed: int) -> torch.Generator:
        """A sampling generator on the model's own device: a generator on another GPU than the
        model (``torch.Generator(device="cuda")`` is always the current one) fails the first draw."""
        return torch.Generator(device=self.model_device).manual_seed(int(seed))

    # ----- sampling settings -----
    def sampling_defaults(self) -> dict[str, Any]:
        """The model's runtime sampling settings (iVideoGPT: temperature, top_k, compile,
        cpu_bf16_decoding); {} if it has none."""
        sampling = getattr(self.model, "sampling", None)
        return dict(sampling) if isinstance(sampling, dict) else {}

    def editable_sampling(self) -> list[str]:
        """The settings a session may change: the numeric ones (temperature, top_k). The others
        (iVideoGPT's compile and cpu_bf16_decoding switches) stay as the checkpoint has them."""
        return [key for key, value in self.sampling_defaults().items() if _is_number(value)]

    def check_sampling(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Validated settings. A key the model does not have, a value of another type than the
        model's own value, or a change of a non-numeric switch is an error saying what is wrong."""
        known = self.sampling_defaults()
        out = {}
        for key, value in settings.items():
            if key not in known:
                have = sorted(known) or "none (this model samples without settings)"
                raise PlayerError(f"the {self.model.model_type} model has no sampling setting '{key}'; "
                                  f"it has {have}.")
            if _is_number(known[key]):
                out[key] = _check_number(key, value, known[key])
            else:
                out[key] = self._check_switch(key, value, known[key])
        return out

    def merge_sampling(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A session's settings carried over to the loaded model: its numeric values for the keys
        the model has, the model's own values for the rest."""
        editable = set(self.editable_sampling())
        return {key: settings[key] if key in editable and _is_number(settings.get(key)) else value
                for key, value in self.sampling_defaults().items()}

    def _check_switch(self, key: str, value: Any, current: Any) -> Any:
        """A non-numeric setting (a bool or a string): only the model's own value is accepted."""
        if type(value) is not type(current):
            kind = "true or false" if isinstance(current, bool) else f"a {type(current).__name__}"
            raise PlayerError(f"sampling.{key}={value!r} must be {kind}, like the model's value {current!r}.")
        if value != current:
            raise PlayerError(f"sampling.{key} is a runtime switch of the loaded {self.model.model_type} model "
                              f"({current!r}), shared by every session; a session can change only "
                              f"{self.editable_sampling()}. Save the checkpoint with sampling.{key}={value!r} "
                              "in its config.json and load that.")
        return value

    @contextlib.contextmanager
    def sampling(self, settings: dict[str, Any]) -> Iterator[None]:
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


def check_device(device: torch.device) -> torch.device:
    """``device`` if this machine has it; a CUDA device it lacks is a ``PlayerError`` saying what to
    use instead (rather than the assertion deep inside ``model.to``)."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise PlayerError(f"device={device} but torch finds no CUDA GPU here (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'none'}); use device=cpu or device=auto.")
    if device.index is not None and device.index >= count:
        raise PlayerError(f"device={device} but this machine has {count} CUDA GPU(s) (cuda:0 to "
                          f"cuda:{count - 1}); pick one of those, or device=auto.")
    return device


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(key: str, value: Any, current: int | float) -> int | float:
    """A numeric setting: finite, an integer where the setting is one, not below its lowest value."""
    if not _is_number(value) or not math.isfinite(value):
        raise PlayerError(f"sampling.{key}={value!r} must be a finite number, like the model's value {current!r}.")
    low, integer = SAMPLING_RULES.get(key, (-math.inf, isinstance(current, int)))
    if integer and value != int(value):
        raise PlayerError(f"sampling.{key}={value!r} must be an integer.")
    if value < low:
        raise PlayerError(f"sampling.{key}={value!r} must be >= {low}.")
    return int(value) if integer else float(value)
