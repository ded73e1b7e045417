"""Episode files: the one on-disk format for replay, demonstrations and pretraining corpora.

One episode = one ``.npz`` holding

    obs      uint8   [T+1, 3, H, W]   single frames (never stacked copies)
    action   float32 [T, A]           action[t] takes obs[t] to obs[t+1]
    reward   float32 [T]              reward[t] is what the env returned for that step
    success  bool    [T]              the env's success flag after each step
    terminal bool    [T]              optional; true where the env ended the episode (not a
                                      time limit). Missing means no terminal step.
    meta     JSON string              task, source, fps and anything else (e.g. action layout)

Files are written atomically (temp file + rename) and validated on read: a bad file is refused
with a message naming the file and the fault.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from worldmodel.atomic_file import atomic_write

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("obs", "action", "reward", "success")
EPISODE_SUFFIX = ".npz"


class EpisodeFormatError(ValueError):
    """An episode file is missing, corrupt or does not fit the run."""

    # What reading a damaged ``.npz`` can raise: a broken zip structure, a corrupt deflate
    # stream (zlib.error), a cut-off file, a bad array header, a member that is not there, a
    # mangled compression-method field (zipfile: NotImplementedError, "compression method is not
    # supported"), an array header numpy's parser cannot tokenize (tokenize.TokenError).
    UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                  NotImplementedError, tokenize.TokenError)

    def __init__(self, path: str | os.PathLike, fault: str):
        self.path, self.fault = str(path), fault
        super().__init__(f"episode file {path}: {fault}")


@dataclass
class Episode:
    obs: np.ndarray  # uint8 [T+1, 3, H, W]
    action: np.ndarray  # float32 [T, A]
    reward: np.ndarray  # float32 [T]
    success: np.ndarray  # bool [T]
    terminal: np.ndarray | None = None  # bool [T]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.terminal is None:
            self.terminal = np.zeros(len(self.reward), dtype=bool)

    def __len__(self) -> int:
        """Number of transitions T."""
        return len(self.action)

    @property
    def image_size(self) -> int:
        return int(self.obs.shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[-1])

    def validate(self, path: str | os.PathLike = "<memory>", image_size: int | None = None,
                 action_dim: int | None = None) -> "Episode":
        """Check dtypes, shapes and lengths (and the run's frame size / action dim if given)."""
        def fault(msg: str) -> EpisodeFormatError:
            return EpisodeFormatError(path, msg)

        expected = {"obs": np.uint8, "action": np.float32, "reward": np.float32,
                    "success": np.bool_, "terminal": np.bool_}
        for key, dtype in expected.items():
            value = getattr(self, key)
            if value.dtype != dtype:
                raise fault(f"'{key}' has dtype {value.dtype}, expected {np.dtype(dtype)}")
        if self.obs.ndim != 4 or self.obs.shape[1] != 3 or self.obs.shape[2] != self.obs.shape[3]:
            raise fault(f"'obs' has shape {self.obs.shape}, expected [T+1, 3, H, H]")
        if self.action.ndim != 2:
            raise fault(f"'action' has shape {self.action.shape}, expected [T, A]")
        steps = len(self.action)
        if steps < 1:
            raise fault("episode has no transitions")
        if len(self.obs) != steps + 1:
            raise fault(f"'obs' has {len(self.obs)} frames but 'action' has {steps} steps "
                        "(expected T+1 frames for T steps)")
        for key in ("reward", "success", "terminal"):
            value = getattr(self, key)
            if value.shape != (steps,):
                raise fault(f"'{key}' has shape {value.shape}, expected ({steps},)")
        if not (np.isfinite(self.action).all() and np.isfinite(self.reward).all()):
            raise fault("'action' or 'reward' holds NaN or inf")
        if image_size is not None and self.image_size != image_size:
            raise fault(f"frames are {self.image_size}x{self.image_size} but the run uses "
                        f"{image_size}x{image_size}; re-collect or convert at that size")
        if action_dim is not None and self.action_dim != action_dim:
            raise fault(f"actions have {self.action_dim} dims but the run's env has {action_dim}")
        return self


def save_episode(path: str | os.PathLike, episode: Episode, compress: bool = True) -> Path:
    """Validate and write ``episode`` atomically; returns the final path."""
    path = Path(path)
    if path.suffix != EPISODE_SUFFIX:
        path = path.with_suffix(EPISODE_SUFFIX)
    episode.validate(path)
    arrays = dict(obs=episode.obs, action=episode.action, reward=episode.reward,
                  success=episode.success, terminal=episode.terminal,
                  meta=np.array(json.dumps(episode.meta, sort_keys=True)))
    atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _decode_meta(path: Path, raw: np.ndarray) -> dict[str, Any]:
    """The ``meta`` array as a dict; anything else is a format error."""
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise EpisodeFormatError(path, f"'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise EpisodeFormatError(path, f"'meta' must be a JSON object (a dict), got {type(meta).__name__}")
    return meta


def load_episode(path: str | os.PathLike, image_size: int | None = None,
                 action_dim: int | None = None) -> Episode:
    """Read and validate one episode file; raises ``EpisodeFormatError`` naming the fault."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFormatError(path, "no such file")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):  # a plain np.save array under an .npz name
            raise EpisodeFormatError(path, "not an .npz archive (it holds a single array, as "
                                     "np.save writes); save episodes with save_episode")
        with data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise EpisodeFormatError(path, f"missing keys {missing} (has {sorted(data.files)})")
            arrays = {k: data[k] for k in data.files}
    except EpisodeFormatError:
        raise
    except EpisodeFormatError.UNREADABLE as e:
        raise EpisodeFormatError(path, f"unreadable or truncated file ({type(e).__name__}: {e})") from None
    except MemoryError as e:  # numpy allocates what an array header claims before reading the data
        raise EpisodeFormatError(path, f"its arrays do not fit in memory ({e}): a corrupt array header, or "
                                 "an episode too large for this machine (split it)") from None
    meta = _decode_meta(path, arrays["meta"]) if "meta" in arrays else {}
    episode = Episode(obs=arrays["obs"], action=arrays["action"], reward=arrays["reward"],
                      success=arrays["success"], terminal=arrays.get("terminal"), meta=meta)
    return episode.validate(path, image_size=image_size, action_dim=action_dim)


def episode_paths(directory: str | os.PathLike) -> list[Path]:
    """Episode files under ``directory`` (recursively), in sorted order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"episode folder {directory} does not exist")
    return sorted(p for p in directory.rglob(f"*{EPISODE_SUFFIX}") if not p.name.startswith("."))


def iter_episodes(directory: str | os.PathLike, image_size: int | None = None,
                  action_dim: int | None = None, skip_bad: bool = False) -> Iterator[tuple[Path, Episode]]:
    """Yield (path, episode) for every file in ``directory``. A bad file raises, unless
    ``skip_bad`` is set: then it is reported in the log and skipped."""
    for path in episode_paths(directory):
        try:
            yield path, load_episode(path, image_size=image_size, action_dim=action_dim)
        except EpisodeFormatError as e:
            if not skip_bad:
                raise
            log.warning("skipping %s", e)


def load_episodes(directory: str | os.PathLike, image_size: int | None = None,
                  action_dim: int | None = None, skip_bad: bool = False) -> list[Episode]:
    return [ep for _, ep in iter_episodes(directory, image_size, action_dim, skip_bad)]


class EpisodeRecorder:
    """Builds an ``Episode`` step by step, as an env produces it (single frames, uint8 CHW)."""

    def __init__(self, first_frame: np.ndarray) -> None:
        self.frames = [first_frame]
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.successes: list[bool] = []
        self.terminals: list[bool] = []

    def add(self, frame: np.ndarray, action: np.ndarray, reward: float, success: bool,
            terminal: bool) -> None:
        """Record one step: ``action`` taken in the last frame led to ``frame`` and ``reward``."""
        self.frames.append(frame)
        self.actions.append(action)
        self.rewards.append(float(reward))
        self.successes.append(bool(success))
        self.terminals.append(bool(terminal))

    def episode(self, meta: dict[str, Any] | None = None) -> Episode:
        return Episode(obs=np.stack(self.frames).astype(np.uint8),
                       action=np.asarray(self.actions, np.float32).reshape(len(self.actions), -1),
                       reward=np.asarray(self.rewards, np.float32), success=np.asarray(self.successes, bool),
                       terminal=np.asarray(self.terminals, bool), meta=dict(meta or {}))
