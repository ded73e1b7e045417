"""The memory protocol: which stored frames condition the next imagined frame, and which are kept.

A world model that imagines long rollouts stores past frames (with their absolute time step and,
for retrieval, a key per frame) and, before each new frame, asks its memory for the context:

    select(time [B, n], key [B, n, K] | None, query [B, K] | None) -> positions [B, m]

``positions`` index the stored frames, in temporal order, and always end with the most recent
``window`` frames; ``retrieved`` older frames may come first (history: exponentially spaced;
VRAG: the top-k by key distance). After each new frame the store is trimmed with

    keep(time, key) -> positions [B, capacity]

which is where each memory's bounding policy lives (FIFO for window and history; key-space
subsampling for VRAG). Training uses the same ``select`` on the first T-1 frames of a real
segment to build the clip for its last frame (``training_clip``), so the model is trained on
exactly the kind of context it is sampled with (as VRAG's reference trainer does).
"""
from __future__ import annotations

import abc
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from worldmodel.interface import SegmentBatch, WorldModelConfigError

MEMORY_NAMES = ("window", "history", "vrag")
KEY_TYPES = ("pixel", "state")
DISTANCES = ("euclidean", "cosine")


@dataclass
class MemoryConfig:
    """How a world model remembers the past during imagination (``model.memory`` in the config)."""

    name: str = "window"  # window | history | vrag
    window: int | None = None  # recent frames in every context; None: the model's max_context_frames
    retrieved: int | None = None  # older frames before the window (history/vrag); None: = window; window: 0
    distance: str = "euclidean"  # vrag only: key distance, euclidean | cosine (after per-dim weights)
    key: str = "pixel"  # pixel: pooled frame (works in imagination) | state: pose/proprio given per frame
    key_size: int = 8  # pixel keys: frames average-pooled to key_size x key_size (3 * key_size^2 dims)
    key_dim: int | None = None  # state keys: their width (e.g. 2 for a 2-D camera pose)
    weights: list[float] | None = None  # vrag only: per-dim key weights (length = key width); None: all ones
    max_frames: int = 256  # frames stored per rollout; beyond it the memory's policy drops frames
    key_conditioning: bool = True  # state keys: tell the model each context frame's key offset

    def __post_init__(self) -> None:
        if self.name not in MEMORY_NAMES:
            raise WorldModelConfigError(f"unknown memory '{self.name}'; choose one of {list(MEMORY_NAMES)}.")
        if self.key not in KEY_TYPES:
            raise WorldModelConfigError(f"unknown memory key '{self.key}'; choose one of {list(KEY_TYPES)}.")
        if self.distance not in DISTANCES:
            raise WorldModelConfigError(
                f"unknown memory distance '{self.distance}'; choose one of {list(DISTANCES)}.")
        for name in ("window", "retrieved", "key_size", "key_dim", "max_frames"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise WorldModelConfigError(f"memory.{name} must be an integer, got {value!r}.")
        if self.key_size < 1 or self.max_frames < 1 or (self.key_dim is not None and self.key_dim < 1):
            raise WorldModelConfigError(f"memory.key_size, key_dim and max_frames must be >= 1, got "
                                        f"{self.key_size}, {self.key_dim}, {self.max_frames}.")
        if self.name == "window" and self.retrieved:
            raise WorldModelConfigError(f"memory.retrieved={self.retrieved} applies to the history and vrag "
                                        "memories; the window memory retrieves nothing (set memory.name).")
        if self.name == "vrag" and self.key == "state" and not self.key_dim:
            raise WorldModelConfigError("memory.key=state needs memory.key_dim (the width of the per-frame "
                                        "state/pose vector), e.g. key_dim: 2 for a 2-D camera pose.")
        self._refuse_unused_vrag_settings()
        if self.weights is not None:
            self.weights = self._checked_weights(self.weights)
            if len(self.weights) != self.key_width():
                raise WorldModelConfigError(
                    f"memory.weights has {len(self.weights)} entries but keys have {self.key_width()} dims "
                    f"(key={self.key}); give one weight per key dim or leave weights null.")

    def _refuse_unused_vrag_settings(self) -> None:
        """Key weights and distance rank retrieval candidates, which only VRAG has; on window or
        history they would be silently ignored (a user tuning them would believe they matter).
        ``key`` itself stays accepted everywhere: it is shared config (history ignores it)."""
        if self.name == "vrag":
            return
        unused = []
        if self.weights is not None:
            unused.append("weights (set weights: null)")
        if self.distance != DISTANCES[0]:
            unused.append(f"distance={self.distance} (set distance: {DISTANCES[0]})")
        if unused:
            raise WorldModelConfigError(f"memory.{' and memory.'.join(unused)} only rank the vrag memory's "
                                        f"retrieval; the {self.name} memory retrieves by no key: drop them, or "
                                        "use memory.name=vrag.")

    @staticmethod
    def _checked_weights(weights: Any) -> list[float]:
        """``weights`` as a list of finite floats >= 0, or a WorldModelConfigError naming the problem."""
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
            raise WorldModelConfigError(f"memory.weights must be a list of numbers (one per key dim) or null, "
                                        f"got {weights!r}.")
        out = []
        for i, w in enumerate(weights):
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise WorldModelConfigError(f"memory.weights must be numbers, got {w!r} at index {i}; give one "
                                            "number >= 0 per key dim, or null.")
            if not (math.isfinite(w) and w >= 0):
                raise WorldModelConfigError(f"memory.weights must be finite and >= 0, got {w} at index {i}.")
            out.append(float(w))
        return out

    def key_width(self) -> int:
        return 3 * self.key_size ** 2 if self.key == "pixel" else int(self.key_dim)

    def resolved(self, default_window: int) -> "MemoryConfig":
        """A copy with ``window``/``retrieved`` filled in and the sizes checked."""
        window = default_window if self.window is None else int(self.window)
        retrieved = 0 if self.name == "window" else (window if self.retrieved is None else int(self.retrieved))
        if window < 1 or retrieved < 0:
            raise WorldModelConfigError(f"memory.window must be >= 1 and retrieved >= 0, got {window}, {retrieved}.")
        if self.max_frames < window + retrieved:
            raise WorldModelConfigError(
                f"memory.max_frames={self.max_frames} is smaller than one context (window {window} + "
                f"retrieved {retrieved}); raise max_frames.")
        return dataclasses.replace(self, window=window, retrieved=retrieved)

    @classmethod
    def from_any(cls, value: "str | dict[str, Any] | MemoryConfig | None") -> "MemoryConfig":
        """``'vrag'``, ``{'name': 'vrag', ...}``, a MemoryConfig or None (window)."""
        if value is None:
            return cls()
        if isinstance(value, MemoryConfig):
            return value
        if isinstance(value, str):
            return cls(name=value)
        value = dict(value)
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(value) - known
        if bad:
            raise WorldModelConfigError(f"unknown memory keys {sorted(bad)}; valid keys: {sorted(known)}.")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class KeyedSegmentBatch(SegmentBatch):
    """Real segments with a key per frame (pose or proprioceptive state, e.g. ``info["state"]``),
    for training a world model whose memory retrieves by state keys."""

    key: torch.Tensor = field(default=None)  # float32 [B, T, K]

    def to(self, device: torch.device | str) -> "KeyedSegmentBatch":
        moved = super().to(device)
        key = None if self.key is None else self.key.to(device, non_blocking=True)  # None: the model names the fix
        return KeyedSegmentBatch(moved.obs, moved.action, moved.reward, key)


def gaps(time: torch.Tensor) -> torch.Tensor:
    """bool [B, m]: True where a selected frame does not directly follow the frame before it in
    the context (the first frame, retrieved frames, the window after a jump). Such frames get the
    null action: the action stored with them led from a frame that is not in the context."""
    first = torch.ones_like(time[:, :1], dtype=torch.bool)
    return torch.cat([first, time[:, 1:] != time[:, :-1] + 1], dim=1)


class Memory(abc.ABC):
    """Selects the context of the next frame and bounds what a rollout stores."""

    def __init__(self, cfg: MemoryConfig, default_window: int):
        self.cfg = cfg.resolved(default_window)
        self.window: int = self.cfg.window
        self.retrieved: int = self.cfg.retrieved

    @property
    def context_size(self) -> int:
        """Most frames a context holds (retrieved + window)."""
        return self.window + self.retrieved

    @property
    def capacity(self) -> int:
        """Most frames a rollout stores."""
        return self.cfg.max_frames

    @property
    def min_segment_length(self) -> int:
        """The shortest training segment whose clips show the model the kind of context it is
        sampled with (here: a full window, then the target frame)."""
        return self.window + 1

    @property
    def needs_keys(self) -> bool:
        return False

    def selects_beyond_window(self, stored: int) -> bool:
        """Whether the context chosen from a rollout's first ``stored`` frames (times 0..stored-1,
        trimmed to ``capacity`` as a rollout trims them) can be anything but the most recent frames:
        where it cannot, this memory acts as a sliding window (the window memory always does)."""
        return False

    def recent(self, time: torch.Tensor) -> torch.Tensor:
        """Positions [B, w] of the most recent ``window`` stored frames (stores are time-sorted)."""
        B, n = time.shape
        w = min(self.window, n)
        return torch.arange(n - w, n, device=time.device).expand(B, w)

    @abc.abstractmethod
    def select(self, time: torch.Tensor, key: torch.Tensor | None = None,
               query: torch.Tensor | None = None) -> torch.Tensor:
        """Positions [B, m] (temporal order) of the stored frames that condition the next frame.
        time: long [B, n], sorted per row; key: [B, n, K]; query: the key to retrieve for [B, K]."""

    def keep(self, time: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        """Positions [B, c] (temporal order) to keep when the store exceeds capacity; default FIFO."""
        B, n = time.shape
        c = min(n, self.capacity)
        return torch.arange(n - c, n, device=time.device).expand(B, c)

    def training_clip(self, B: int, T: int, key: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Positions [B, m+1] into a T-frame training segment: the context ``select`` gives for its
        last frame (chosen among frames 0..T-2), then T-1 itself. ``key``: [B, T, K] or None."""
        time = torch.arange(T - 1, device=device).expand(B, T - 1)
        if self.needs_keys:
            if key is None:
                raise WorldModelConfigError(f"the '{self.cfg.name}' memory needs a key per frame to build "
                                            "training clips.")
            idx = self.select(time, key[:, :T - 1], self.training_query(key))
        else:
            idx = self.select(time)
        return torch.cat([idx, torch.full((B, 1), T - 1, device=device, dtype=idx.dtype)], dim=1)

    def training_query(self, key: torch.Tensor) -> torch.Tensor:
        """The query for a segment's last frame: its own key for state keys (known in data and
        given or predicted in imagination), the newest known frame's for pixel keys."""
        return key[:, -1] if self.cfg.key == "state" else key[:, -2]
