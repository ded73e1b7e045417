"""Training and held-out segments for pretraining, with a data position that survives restarts.

Held-out split: an episode file is held out when a hash of its name (folder name + path inside
the folder) falls below ``val_fraction``, so the split is the same on every machine, for every
rank and across restarts, and adding files to a folder never moves old ones between splits. A
folder always keeps at least one training episode; if the hash holds out nothing at all, the
file with the smallest hash is held out. A folder whose held-out files are all shorter than a
segment is left out of evaluation (with a warning). Alternatively ``val_folders`` names folders
of their own.

Data position: the segment that sample ``i`` of micro-batch ``m`` of stage ``s`` on rank ``r``
gets is drawn by a generator seeded with ``(seed, s, m, r, i)`` (``KeyedSegments``). A batch is
thus a pure function of its position: resuming at micro-batch ``m`` gives exactly the batches an
uninterrupted run would have seen, whatever the number of DataLoader workers, and every rank
draws different segments.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from worldmodel.corpora.mix import ActionFreeSegmentDataset, mix_folders
from worldmodel.data import SegmentDataset, collate_segments
from worldmodel.episodes import episode_paths

HASH_SPACE = float(2 ** 64)
EVAL_STREAM = 1_000_003  # stage index used for the fixed evaluation batches (never a real stage)


class _OnlyFiles:
    """Mixin: index only the episode files in ``only`` (None: all)."""

    def __init__(self, *args: Any, only: set[str] | None = None, **kwargs: Any):
        self._only = only
        super().__init__(*args, **kwargs)

    def _index_folder(self, folder: str):  # -> list[EpisodeEntry]
        entries = super()._index_folder(folder)  # type: ignore[misc]
        return [e for e in entries if self._only is None or str(e.path) in self._only]


class SplitSegmentDataset(_OnlyFiles, SegmentDataset):
    pass


class SplitActionFreeSegmentDataset(_OnlyFiles, ActionFreeSegmentDataset):
    pass


def file_hash(folder: str | Path, path: Path) -> float:
    """A stable number in [0, 1) for an episode file."""
    name = f"{Path(folder).name}/{path.relative_to(folder).as_posix()}"
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / HASH_SPACE


def held_out_files(folders: list[str], val_fraction: float) -> tuple[set[str], set[str]]:
    """(training files, held-out files) of ``folders`` by file hash (see the module docstring)."""
    train, val = set(), set()
    best: tuple[float, str] | None = None
    for folder in folders:
        hashed = sorted((file_hash(folder, p), str(p)) for p in episode_paths(folder))
        held = [p for h, p in hashed if h < val_fraction]
        if len(held) == len(hashed):  # keep one training episode per folder
            held = held[:-1]
        val.update(held)
        train.update(p for _, p in hashed if p not in held)
        if len(hashed) > 1 and (best is None or hashed[0][0] < best[0]):
            best = hashed[0]
    if not val and val_fraction > 0:
        if best is None:
            raise ValueError("every folder of the mix holds a single episode: nothing can be held out for "
                             "evaluation. Set eval.val_folders, or eval.every=0 to train without evaluation.")
        val.add(best[1])
        train.discard(best[1])
    return train, val


def build_datasets(data_cfg: Mapping[str, Any], segment_length: int, seed: int = 0,
                   val_fraction: float = 0.05, val_folders: list[str] | None = None,
                   root: str | None = None, allow_missing: bool = False,
                   cache_episodes: int = 64) -> tuple[SegmentDataset, SegmentDataset | None]:
    """(training dataset, held-out dataset or None) of a mix config (``cfgs/data/*.yaml``)."""
    weights, steps = mix_folders(data_cfg, root, allow_missing)
    action_free = bool(data_cfg.get("action_free", False))
    cls = SplitActionFreeSegmentDataset if action_free else SplitSegmentDataset
    common = dict(image_size=data_cfg.get("image_size"), skip_bad=True, seed=seed,
                  cache_episodes=cache_episodes)
    if val_folders:
        val = cls({str(f): 1.0 for f in val_folders}, segment_length, **common)
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


def position_loader(dataset: SegmentDataset, seed: int, stage: int, start: int, rank: int,
                    batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Endless DataLoader of SegmentBatch from micro-batch ``start`` of ``stage`` on ``rank``.
    It has its own torch generator: starting it never draws from the global RNG, whose state
    the checkpoints restore."""
    return DataLoader(KeyedSegments(dataset, seed), batch_sampler=PositionBatches(stage, start, rank, batch_size),
                      num_workers=num_workers, collate_fn=collate_segments, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


def eval_batches(dataset: SegmentDataset, seed: int, batches: int, batch_size: int) -> list:
    """The fixed held-out batches every evaluation uses (the same at every step and restart)."""
    keyed = KeyedSegments(dataset, seed)
    return [collate_segments([keyed[(EVAL_STREAM, j, 0, i)] for i in range(batch_size)]) for j in range(batches)]
