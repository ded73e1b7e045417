"""Dataset mixes for pretraining: a config of episode folders with weights -> one SegmentDataset.

A mix (``cfgs/data/<mix>.yaml``, the ``data`` group of scripts/pretrain.py) reads

    root: data                      # relative dataset paths are under this folder
    image_size: 64                  # every folder must hold frames of this size (null: any one)
    action_free: true               # drop actions (mixing robots with different action spaces)
    datasets:
      fractal20220817_data: {path: oxe/fractal20220817_data, weight: 0.15, frame_step: 1}
      bridge:               {path: oxe/bridge, weight: 0.15, frame_step: 2}

Sampling: a dataset with probability weight / sum(weights), whatever its size (as iVideoGPT
does); then a segment uniformly among all the segments of that dataset, i.e. an episode with
probability proportional to its number of segments, then a start uniformly in it; episodes
shorter than one segment are never drawn (SegmentDataset, worldmodel/data.py). iVideoGPT
differs within a dataset: it draws an episode uniformly, whatever its length, then a start in
it, padding episodes shorter than a segment; so its long episodes are sampled less per segment
and its short ones more (two episodes of 100 and 10 steps, 8-frame segments: 50% / 50% there,
94 / 98 = 96% / 4% here). ``frame_step`` evens out control frequencies (RT-1
records at 3 Hz, Bridge at 5 Hz, Kuka at 10 Hz: iVideoGPT keeps every round(fps / 3)-th frame).
With ``action_free`` the segments carry zero-width actions [T-1, 0], so datasets of any action
space mix; without it every dataset must give the same action size (A x frame_step).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from worldmodel.data import SegmentDataset

log = logging.getLogger(__name__)

REFERENCE_FPS = 3.0  # RT-1's control rate: iVideoGPT's unit for per-dataset frame steps


def frame_step_for(fps: float, reference_fps: float = REFERENCE_FPS) -> int:
    """The frame step that brings a dataset recorded at ``fps`` near ``reference_fps``."""
    return max(int(round(fps / reference_fps)), 1)


class ActionFreeSegmentDataset(SegmentDataset):
    """SegmentDataset whose segments drop the actions (action [T-1, 0]): for video pretraining
    on datasets whose action spaces differ."""

    def _check_dims(self) -> None:
        sizes = {e.image_size for f in self.entries for e in f}
        if len(sizes) > 1:
            raise ValueError(f"the folders mix frame sizes {sorted(sizes)}; convert them to one "
                             "size or pass image_size to find the odd files.")
        self.image_size = sizes.pop() if sizes else self.image_size
        self.segment_action_dim = 0

    def cut(self, episode: Any, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, action, reward = super().cut(episode, start, k)
        return obs, action[:, :0], reward  # [T,3,H,W], [T-1,0], [T-1]


def mix_root(cfg: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """The folder relative dataset paths are under: ``root`` if given, else the config's
    ``root``, else the current directory."""
    return Path(root if root is not None else cfg.get("root") or ".")


def resolve_folder(path: str | os.PathLike, base: Path) -> Path:
    """``path`` as it is if absolute, else under ``base`` (the mix root)."""
    folder = Path(path)
    return folder if folder.is_absolute() else base / folder


def mix_folders(cfg: Mapping[str, Any], root: str | os.PathLike | None = None,
                allow_missing: bool = False) -> tuple[dict[str, float], dict[str, int]]:
    """The mix's {folder: weight} and {folder: frame_step}, folders resolved under ``root``
    (default: the config's ``root``, else the current directory)."""
    datasets = cfg.get("datasets") or {}
    if not datasets:
        raise ValueError("the mix config has no 'datasets' (expected datasets: {name: {path, weight, "
                         "frame_step}})")
    base = mix_root(cfg, root)
    weights: dict[str, float] = {}
    steps: dict[str, int] = {}
    named: dict[Path, str] = {}  # resolved folder -> its name in the mix
    missing = []
    for name, entry in datasets.items():
        if "path" not in entry:
            raise ValueError(f"dataset '{name}' of the mix has no 'path'")
        folder = resolve_folder(entry["path"], base)
        weight = float(entry.get("weight", 1.0))
        if weight <= 0:
            continue
        if not folder.is_dir():
            missing.append(f"{name}: {folder}")
            continue
        if folder.resolve() in named:  # one folder under two names: only the last weight would count
            raise ValueError(f"datasets '{named[folder.resolve()]}' and '{name}' of the mix are the same "
                             f"folder {folder}; list it once, with the weight it should have")
        named[folder.resolve()] = name
        weights[str(folder)] = weight
        steps[str(folder)] = int(entry.get("frame_step", 1))
    if missing:
        msg = ("mix datasets not found (convert them first with scripts/convert_dataset.py, or set "
               "the mix's root):\n  " + "\n  ".join(missing))
        if not allow_missing or not weights:
            raise FileNotFoundError(msg)
        log.warning("%s\ntraining on the %d others", msg, len(weights))
    return weights, steps


def load_mix(cfg: Mapping[str, Any], segment_length: int, root: str | os.PathLike | None = None,
             seed: int = 0, skip_bad: bool = True, allow_missing: bool = False,
             **dataset_kwargs: Any) -> SegmentDataset:
    """A SegmentDataset sampling the mix's folders at its weights and frame steps.

    Args:
        cfg: the mix config (a dict or an OmegaConf node, e.g. ``cfg.data``).
        segment_length: frames per segment.
        root: overrides the config's ``root``.
        allow_missing: train on the folders that exist (warning) instead of failing.
        dataset_kwargs: passed to SegmentDataset (e.g. ``action_dim``, ``cache_episodes``).
    """
    weights, steps = mix_folders(cfg, root, allow_missing)
    dataset_cls = ActionFreeSegmentDataset if cfg.get("action_free", False) else SegmentDataset
    return dataset_cls(weights, segment_length, frame_step=steps, image_size=cfg.get("image_size"),
                       skip_bad=skip_bad, seed=seed, **dataset_kwargs)
