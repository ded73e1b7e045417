"""Training and held-out segments for pretraining, with a data position that survives restarts.

Held-out split: an episode file is held out when a hash of its name (folder name + path inside
the folder; the outermost mix folder's for nested folders) falls below ``val_fraction``, so the
split is the same on every machine, for every rank and across restarts, and adding files to a
folder never moves old ones between splits. A folder always keeps at least one training episode;
if the hash holds out nothing at all, the file with the smallest hash is held out (among those whose
every folder, nested ones included, keeps another). A folder whose
held-out files are all shorter than a segment is left out of evaluation (with a warning).
Alternatively ``val_folders`` names folders of their own (``val_folder_steps``): relative paths
are under the mix root, like the mix's own folders, and each folder is sampled at the frame step
of the mix dataset it belongs to (the same folder, or a folder of the same name as a mix dataset
or its folder), or at the one it gives (``{path, frame_step}``), else 1. A held-out folder that
overlaps a mix folder is also trained on; that is allowed, with a warning.

Data position: the segment that sample ``i`` of micro-batch ``m`` of stage ``s`` on rank ``r``
gets is drawn by a generator seeded with ``(seed, s, m, r, i)`` (``KeyedSegments``). A batch is
thus a pure function of its position: resuming at micro-batch ``m`` gives exactly the batches an
uninterrupted run would have seen, whatever the number of DataLoader workers, and every rank
draws different segments.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from worldmodel.corpora.mix import ActionFreeSegmentDataset, mix_folders, mix_root, resolve_folder
from worldmodel.data import SegmentDataset, collate_segments
from worldmodel.episodes import episode_paths

log = logging.getLogger(__name__)

HASH_SPACE = float(2 ** 64)
DEFAULT_LOADER_WORKERS = 4  # data_loader.num_workers=null: decoding keeps up with a GPU step at 64 px
EVAL_STREAM = 1_000_003  # stage index used for the fixed evaluation batches (never a real stage)
VAL_FOLDER_KEYS = ("path", "frame_step")  # the keys of a {path, frame_step} entry of eval.val_folders


class _OnlyFiles:
    """Mixin: index only the episode files in ``only`` (None: all)."""

    def __init__(self, *args: Any, only: set[str] | None = None, **kwargs: Any):
        self._only = only
        super().__init__(*args, **kwargs)

    def _indexes(self, path: Path) -> bool:
        return self._only is None or str(path) in self._only


class SplitSegmentDataset(_OnlyFiles, SegmentDataset):
    pass


class SplitActionFreeSegmentDataset(_OnlyFiles, ActionFreeSegmentDataset):
    pass


def file_hash(folder: str | Path, path: Path) -> float:
    """A stable number in [0, 1) for an episode file."""
    name = f"{Path(folder).name}/{path.relative_to(folder).as_posix()}"
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / HASH_SPACE


def held_out_files(folders: list[str], val_fraction: float) -> tuple[set[str], set[str]]:
    """(training files, held-out files) of ``folders`` by file hash (see the module docstring).
    A file in nested mix folders (``oxe`` and ``oxe/bridge``) is decided once, by its hash under
    the outermost of them, so it is never held out by one folder and trained on through another."""
    hashes: dict[str, float] = {}
    members: dict[str, list[str]] = {}
    for folder in sorted(folders, key=lambda f: len(Path(f).resolve().parts)):  # outermost first
        paths = episode_paths(folder)
        members[folder] = [str(p) for p in paths]
        for p in paths:
            hashes.setdefault(str(p), file_hash(folder, p))
    val = {p for p, h in hashes.items() if h < val_fraction}
    for paths in members.values():  # keep one training episode per folder: its largest hash
        if paths and set(paths) <= val:
            val.discard(max(paths, key=hashes.__getitem__))
    if not val and val_fraction > 0:
        if all(len(paths) <= 1 for paths in members.values()):
            raise ValueError("every folder of the mix holds a single episode: nothing can be held out for "
                             "evaluation. Set eval.val_folders, or eval.every=0 to train without evaluation.")
        # a file can be held out only if every folder holding it (nested folders: several) keeps another
        fewest: dict[str, int] = {}  # per file: the fewest files of a folder holding it
        for paths in members.values():
            for p in paths:
                fewest[p] = min(fewest.get(p, len(paths)), len(paths))
        candidates = [p for p, n in fewest.items() if n > 1]
        if not candidates:
            raise ValueError("no episode can be held out for evaluation without taking the only episode of a "
                             "folder of the mix (nested folders). Set eval.val_folders, or eval.every=0 to train "
                             "without evaluation.")
        val.add(min(candidates, key=hashes.__getitem__))
    return set(hashes) - val, val


def _val_entry(entry: str | Mapping[str, Any]) -> tuple[str, int | None]:
    """(path, frame_step or None) of one eval.val_folders entry: a path or {path, frame_step}."""
    if isinstance(entry, (str, Path)):
        return str(entry), None
    if not isinstance(entry, Mapping) or "path" not in entry or set(entry) - set(VAL_FOLDER_KEYS):
        raise ValueError(f"eval.val_folders entry {entry!r}: expected a folder path or "
                         "{path: <folder>, frame_step: <k>}")
    step = entry.get("frame_step")
    if step is not None and int(step) < 1:
        raise ValueError(f"eval.val_folders entry {entry!r}: frame_step must be >= 1")
    return str(entry["path"]), None if step is None else int(step)


def _mix_step(folder: Path, data_cfg: Mapping[str, Any], base: Path) -> int | None:
    """The frame step of the mix dataset ``folder`` belongs to: the same folder, else the
    dataset named like it (by its name in the mix or its folder's name); None when none does."""
    same, named = set(), set()
    for name, entry in (data_cfg.get("datasets") or {}).items():
        mix_folder = resolve_folder(entry["path"], base)
        step = int(entry.get("frame_step", 1))
        if mix_folder.resolve() == folder.resolve():
            same.add(step)
        elif folder.name in (name, mix_folder.name):
            named.add(step)
    steps = same or named
    if len(steps) > 1:
        raise ValueError(f"eval.val_folders: {folder} matches mix datasets of frame steps {sorted(steps)}; "
                         "give its step: {path: ..., frame_step: <k>}")
    return steps.pop() if steps else None


def val_folder_steps(val_folders: list[str | Mapping[str, Any]], data_cfg: Mapping[str, Any],
                     root: str | None = None) -> dict[str, int]:
    """{folder: frame_step} of eval.val_folders (see the module docstring): relative paths are
    resolved under the mix root (``root``, else the mix's ``root``) as ``mix_folders`` does."""
    base = mix_root(data_cfg, root)
    mix_steps = {int(e.get("frame_step", 1)) for e in (data_cfg.get("datasets") or {}).values()}
    out: dict[str, int] = {}
    for entry in val_folders:
        path, step = _val_entry(entry)
        folder = resolve_folder(path, base)
        if not folder.is_dir():
            raise FileNotFoundError(f"eval.val_folders: {folder} does not exist (relative paths are under the "
                                    f"mix root {base}; set data.root or data_loader.root, or give an absolute path)")
        if step is None:
            step = _mix_step(folder, data_cfg, base)
        if step is None:
            step = 1
            if mix_steps - {1}:
                log.warning("eval.val_folders: %s belongs to no mix dataset and is sampled at frame_step 1, "
                            "while the mix uses frame steps %s; give {path: ..., frame_step: <k>}",
                            folder, sorted(mix_steps))
        out[str(folder)] = step
    return out


def _warn_if_trained_on(val_folders: list[str], mix: list[str]) -> None:
    """Held-out folders are meant to be unseen; one that is, holds or sits inside a mix folder is
    also trained on (allowed, e.g. to compare with a seen-data score, but never silently)."""
    for v in val_folders:
        vr = Path(v).resolve()
        for m in mix:
            mr = Path(m).resolve()
            if vr == mr or mr in vr.parents or vr in mr.parents:
                log.warning("eval.val_folders: %s overlaps the mix folder %s, so its episodes are also trained "
                            "on and its held-out scores are seen-data scores. For unseen episodes of the mix, "
                            "leave eval.val_folders empty (eval.val_fraction holds out a share of every folder).",
                            v, m)


def build_datasets(data_cfg: Mapping[str, Any], segment_length: int, seed: int = 0,
                   val_fraction: float = 0.05, val_folders: list[str | Mapping[str, Any]] | None = None,
                   root: str | None = None, allow_missing: bool = False,
                   cache_episodes: int = 64) -> tuple[SegmentDataset, SegmentDataset | None]:
    """(training dataset, held-out dataset or None) of a mix config (``cfgs/data/*.yaml``).
    ``val_folders``: held-out folders (paths or {path, frame_step}, see ``val_folder_steps``)
    instead of a hash split of the mix's files."""
    weights, steps = mix_folders(data_cfg, root, allow_missing)
    action_free = bool(data_cfg.get("action_free", False))
    cls = SplitActionFreeSegmentDataset if action_free else SplitSegmentDataset
    common = dict(image_size=data_cfg.get("image_size"), skip_bad=True, seed=seed,
                  cache_episodes=cache_episodes)
    if val_folders:
        val_steps = val_folder_steps(list(val_folders), data_cfg, root)
        _warn_if_trained_on(list(val_steps), list(weights))
        val = cls({f: 1.0 for f in val_steps}, segment_length, frame_step=val_steps, **common)
        return cls(weights, segment_length, frame_step=steps, **common), val
    if val_fraction <= 0:
        return cls(weights, segment_length, frame_step=steps, **common), None
    train_files, val_files = held_out_files(list(weights), val_fraction)
    train = cls(weights, segment_length, frame_step=steps, only=train_files, **common)
    held = {f: w for f, w in weights.items() if any(p.startswith(str(Path(f)) + "/") for p in val_files)}
    try:
        val = cls(held, segment_length, frame_step={f: steps[f] for f in held}, only=val_files,
                  skip_short_folders=True, **common)
    except ValueError as e:
        raise ValueError(f"held-out episodes: {e} Set eval.val_folders to folders of longer episodes, raise "
                         f"eval.val_fraction, or set eval.every=0 to train without evaluation.") from None
    return train, val


class KeyedSegments(Dataset):
    """Map-style view of a SegmentDataset: key (ints) -> the segment drawn with seed (seed, *key)."""

    def __init__(self, source: SegmentDataset, seed: int):
        self.source, self.seed = source, seed
        self._cache: OrderedDict | None = None  # per worker process (each has its own copy)

    def __getitem__(self, key: tuple[int, ...]):
        if self._cache is None:
            self._cache = OrderedDict()
        rng = np.random.default_rng([self.seed, *key])
        obs, action, reward, _ = self.source.sample(rng, self._cache)
        return obs, action, reward


class PositionBatches(Sampler):
    """Endless batches of keys (stage, micro-batch, rank, i), starting at micro-batch ``start``."""

    def __init__(self, stage: int, start: int, rank: int, batch_size: int):
        self.stage, self.start, self.rank, self.batch_size = stage, start, rank, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        m = self.start
        while True:
            yield [(self.stage, m, self.rank, i) for i in range(self.batch_size)]
            m += 1


def loader_workers(setting: int | None) -> int:
    """``data_loader.num_workers``; None: ``DEFAULT_LOADER_WORKERS``, but no more than the CPUs this
    process may run on (more workers only contend for them, and torch warns once per worker)."""
    if setting is not None:
        return int(setting)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(DEFAULT_LOADER_WORKERS, cpus)


def position_loader(dataset: SegmentDataset, seed: int, stage: int, start: int, rank: int,
                    batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Endless DataLoader of SegmentBatch from micro-batch ``start`` of ``stage`` on ``rank``.
    It has its own torch generator: starting it never draws from the global RNG, whose state
    the checkpoints restore."""
    return DataLoader(KeyedSegments(dataset, seed), batch_sampler=PositionBatches(stage, start, rank, batch_size),
                      num_workers=num_workers, collate_fn=collate_segments, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


class FixedBatches(Sequence):
    """Held-out batches ``start`` .. ``start + count - 1`` of the evaluation stream, drawn when
    read: the same segments at every read, step and restart, without holding them in memory."""

    def __init__(self, dataset: SegmentDataset, seed: int, start: int, count: int, batch_size: int):
        self.keyed, self.start, self.count, self.batch_size = KeyedSegments(dataset, seed), start, count, batch_size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, j: int):  # -> SegmentBatch
        if not 0 <= j < self.count:
            raise IndexError(f"held-out batch {j} of {self.count}")
        return collate_segments([self.keyed[(EVAL_STREAM, self.start + j, 0, i)] for i in range(self.batch_size)])


def eval_batches(dataset: SegmentDataset, seed: int, batches: int, batch_size: int) -> list:
    """The fixed held-out batches every evaluation uses (the same at every step and restart)."""
    return list(FixedBatches(dataset, seed, 0, batches, batch_size))


def fvd_extra_batches(dataset: SegmentDataset, seed: int, videos: int, batch_size: int,
                      eval_batches_count: int) -> FixedBatches:
    """The held-out batches FVD needs beyond the ``eval_batches_count`` regular ones to reach
    ``videos`` videos: the next batches of the same fixed stream, drawn at each evaluation."""
    needed = math.ceil(videos / batch_size)
    return FixedBatches(dataset, seed, eval_batches_count, max(0, needed - eval_batches_count), batch_size)
