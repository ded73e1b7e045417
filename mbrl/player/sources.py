"""Where a player session's start context comes from: episode files, or a fresh env reset."""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mbrl.demos import DemoSettingsError, check_settings
from mbrl.player.errors import NotFound, PlayerError
from worldmodel.episodes import EPISODE_SUFFIX, Episode, EpisodeFormatError, episode_paths, load_episode

log = logging.getLogger(__name__)
EPISODE_CACHE = 16  # episodes kept in memory (a 100-step 64x64 episode is about 1.2 MB)


class EpisodeCatalog:
    """The episode files under one folder (searched recursively) or one file, by name.

    Names are paths relative to the folder; only listed names can be loaded, so a request can
    never reach another file of the machine. With ``task_cfg``, an episode recorded at other env
    settings (action_repeat, camera, flip_rows, ...) is refused, as demo=true training refuses it
    (``mbrl.demos.check_settings``): its frames and transitions are not the task's."""

    def __init__(self, root: str | Path | None, task_cfg: Mapping[str, Any] | None = None):
        self.root = Path(root).expanduser() if root is not None else None
        self.task_cfg = task_cfg
        self._cache: OrderedDict[str, Episode] = OrderedDict()

    def names(self) -> list[str]:
        if self.root is None or not self.root.exists():
            return []
        if self.root.is_file():
            return [self.root.name]
        return [p.relative_to(self.root).as_posix() for p in episode_paths(self.root)]

    def path(self, name: str) -> Path:
        if name not in self.names():
            where = self.root if self.root is not None else "(no episode folder)"
            raise NotFound(f"unknown episode '{name}' in {where}; the page lists the valid ones.")
        return self.root if self.root.is_file() else self.root / name

    def load(self, name: str, image_size: int, action_dim: int) -> Episode:
        """The validated episode; frames and action dim must fit the world model."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        path = self.path(name)
        try:
            episode = load_episode(path, image_size=image_size, action_dim=action_dim)
        except EpisodeFormatError as e:
            raise PlayerError(f"{e} (the world model wants {image_size}x{image_size} frames and "
                              f"{action_dim}-dim actions)") from None
        if self.task_cfg is not None:
            try:
                notes = check_settings(path, episode.meta, self.task_cfg)
            except DemoSettingsError as e:
                raise PlayerError(str(e)) from None
            if notes:  # advisory (another episode_length) or not recorded: playable, but say so
                log.warning("episode %s: settings differ from the task's or are not recorded: %s", path,
                            ", ".join(f"task.{k}={'unrecorded' if v is None else v}" for k, v in notes.items()))
        self._cache[name] = episode
        while len(self._cache) > EPISODE_CACHE:
            self._cache.popitem(last=False)
        return episode


def check_episode_root(root: str | Path) -> Path:
    """An ``episodes=`` argument must be an existing .npz file or folder."""
    path = Path(root).expanduser()
    if path.is_file() and path.suffix == EPISODE_SUFFIX:
        return path
    if path.is_dir():
        return path
    raise PlayerError(f"episodes={root}: not an episode {EPISODE_SUFFIX} file or a folder of them.")


def episode_context(episode: Episode, start: int, context_frames: int) -> np.ndarray:
    """The ``context_frames`` real frames ending at ``obs[start]``: uint8 [T0, 3, H, W]."""
    first = context_frames - 1
    if not first <= start <= len(episode):
        raise PlayerError(f"start frame {start} is out of range: this model needs {context_frames} context "
                          f"frames, so start at {first} .. {len(episode)} of this episode.")
    return episode.obs[start - first:start + 1]
