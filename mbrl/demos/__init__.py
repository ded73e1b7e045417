"""Demonstrations: where they live and how a run loads them (``demo=true``).

    demonstrations/<suite>/<task>/*.npz     episode files (worldmodel/episodes.py format)

``<task>`` is the task config's file name (``cfgs/task/metaworld/plate_slide.yaml`` ->
``plate_slide``), derived from ``task_cfg.name`` (``plate-slide-v3``, ``PickCube-v1``,
``walker_walk``) unless the task config sets ``demo_dir``; LIBERO adds ``task_<task_index>``
(``demonstrations/libero/libero_spatial/task_0``). Collect them with
``scripts/collect_demos.py`` or convert downloaded ones with ``scripts/convert_demos.py``.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from worldmodel.episodes import Episode, EpisodeFormatError, episode_paths, load_episode

log = logging.getLogger(__name__)

# Where demonstrations live unless MBRL_DEMO_ROOT says otherwise: the repo's demonstrations/.
DEMO_ROOT_ENV = "MBRL_DEMO_ROOT"
DEFAULT_DEMO_ROOT = Path(__file__).resolve().parents[2] / "demonstrations"


def demo_root() -> Path:
    return Path(os.environ.get(DEMO_ROOT_ENV, DEFAULT_DEMO_ROOT))


def task_slug(name: str) -> str:
    """``plate-slide-v3`` -> ``plate_slide``; ``PickCube-v1`` -> ``pick_cube``."""
    name = re.sub(r"-v\d+$", "", str(name))
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)  # CamelCase -> Camel_Case
    return name.replace("-", "_").lower()


def demo_dir(task_cfg: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """``<root>/<suite>/<task>``: the folder of this task's demonstrations."""
    if task_cfg.get("demo_dir"):
        return Path(task_cfg["demo_dir"])
    for key in ("suite", "name"):
        if not task_cfg.get(key):
            raise ValueError(f"task config is missing '{key}'; pass cfg.task (cfgs/task/<suite>/<task>.yaml)")
    folder = Path(root if root is not None else demo_root()) / str(task_cfg["suite"]) / task_slug(task_cfg["name"])
    # LIBERO configs name a benchmark suite; the task within it is task_index.
    return folder / f"task_{int(task_cfg['task_index'])}" if task_cfg.get("task_index") is not None else folder


def collect_command(task_cfg: Mapping[str, Any], episodes: int = 5) -> str:
    if task_cfg.get("suite") == "libero":
        return (f"python scripts/convert_demos.py format=libero input=<LIBERO demo .hdf5> "
                f"task=libero/{task_slug(task_cfg.get('name'))} task.task_index={task_cfg.get('task_index')}")
    return (f"python scripts/collect_demos.py task={task_cfg.get('suite')}/"
            f"{task_slug(task_cfg.get('name', '<task>'))} episodes={episodes}")


def load_demos(task_cfg: Mapping[str, Any], image_size: int, action_dim: int,
               root: str | os.PathLike | None = None, skip_bad: bool = False) -> list[Episode]:
    """All demonstration episodes of the task, checked against the run's frame size and action
    dim. Raises ``FileNotFoundError`` (with the command that makes them) when there are none."""
    folder = demo_dir(task_cfg, root)
    paths = episode_paths(folder) if folder.is_dir() else []
    if not paths:
        what = "is missing" if not folder.is_dir() else "holds no .npz episodes"
        raise FileNotFoundError(
            f"demo=true but the demonstration folder {folder} {what}. Make demonstrations with: "
            f"{collect_command(task_cfg)} (or convert downloaded ones with scripts/convert_demos.py).")
    episodes = []
    for path in paths:
        try:
            episodes.append(load_episode(path, image_size=image_size, action_dim=action_dim))
        except EpisodeFormatError as e:
            if not skip_bad:
                raise EpisodeFormatError(path, f"{e.fault}. Re-collect with: {collect_command(task_cfg)}") from None
            log.warning("skipping %s", e)
    if not episodes:
        raise FileNotFoundError(f"no readable demonstration in {folder}; re-collect with: "
                                f"{collect_command(task_cfg)}")
    return episodes
