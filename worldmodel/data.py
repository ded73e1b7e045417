"""Random training segments from folders of episode files, for world-model (pre)training.

A segment is T frames from one episode, never crossing its end:

    obs    uint8   [T, 3, H, W]     frames s, s+k, ..., s+(T-1)k       (k = frame_step)
    action float32 [T-1, k*A]       the k actions between two kept frames, concatenated
    reward float32 [T-1]            the k rewards between two kept frames, summed

With ``frame_step`` k > 1 nothing is thrown away: the k actions that take frame s+ik to
s+(i+1)k are concatenated (so a model trained at k sees actions of size k*A) and their rewards
summed (the return over the skipped interval). Action-free corpora (videos) store ``A = 0``.

Sampling, per segment: a folder by its weight (a dataset mix), then an episode of that folder
with probability proportional to the number of segments it holds, then a start uniformly: so
within a folder every segment is equally likely. Episodes shorter than one segment are never
drawn (they are counted and reported). This is not iVideoGPT's sampling within a dataset: it
draws an episode uniformly, whatever its length, then a start, padding episodes shorter than a
segment; long episodes weigh more here (a 100-step and a 10-step episode, 8-frame segments:
sampled 96% / 4% here, 50% / 50% there). The folder draw by weight is the same.

Memory: the dataset indexes files at construction by reading only the array headers inside
each ``.npz``; episodes are loaded lazily inside the worker that samples them and kept in a
per-worker LRU cache of ``cache_episodes`` episodes, so memory is bounded by
``num_workers * cache_episodes`` episodes whatever the corpus size. It is an infinite
``IterableDataset``; each DataLoader worker draws from its own stream seeded by
(``seed``, worker id), so runs are reproducible for a fixed seed and worker count.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from worldmodel.episodes import Episode, EpisodeFormatError, episode_paths, load_episode
from worldmodel.interface import SegmentBatch

log = logging.getLogger(__name__)

DEFAULT_CACHE_EPISODES = 64


@dataclass
class EpisodeEntry:
    path: Path
    steps: int  # transitions T of the episode
    image_size: int
    action_dim: int


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the arrays in an ``.npz`` read from the headers only (no decompression)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(f)
                shapes[name[:-4]] = tuple(shape)
    except EpisodeFormatError.UNREADABLE as e:  # includes zlib.error (a corrupt member)
        raise EpisodeFormatError(path, f"unreadable or truncated file ({type(e).__name__}: {e})") from None
    for key in ("obs", "action"):
        if key not in shapes:
            raise EpisodeFormatError(path, f"missing keys ['{key}'] (has {sorted(shapes)})")
    obs, action = shapes["obs"], shapes["action"]
    if len(obs) != 4 or len(action) != 2 or obs[0] != action[0] + 1:
        raise EpisodeFormatError(path, f"'obs' {obs} and 'action' {action} do not form an episode "
                                       "(expected [T+1, 3, H, W] and [T, A])")
    return shapes


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """An index drawn with the probabilities whose cumulative sum is ``cdf``."""
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)


class SegmentDataset(IterableDataset):
    """Infinite stream of random segments from one or more folders of episode files.

    Args:
        folders: folder paths, or {folder: sampling weight} for a dataset mix (weights need
            not sum to one).
        segment_length: frames per segment T (>= 2).
        frame_step: keep every k-th frame; an int, or {folder: k} per folder.
        image_size / action_dim: the run's; every episode must match (checked on the headers
            at construction and on load). None: taken from the data, which must agree.
        skip_bad: skip (and report) unreadable or invalid files instead of failing.
        seed: base seed of the sampling streams.
        cache_episodes: episodes each worker keeps in memory.
        skip_short_folders: leave out (with a warning) a folder none of whose episodes is long
            enough for a segment, instead of failing; it fails only if every folder is left
            out. For held-out sets, whose few files per folder may all be short.
    """

    def __init__(self, folders: list[str] | dict[str, float], segment_length: int,
                 frame_step: int | dict[str, int] = 1, image_size: int | None = None,
                 action_dim: int | None = None, skip_bad: bool = False, seed: int = 0,
                 cache_episodes: int = DEFAULT_CACHE_EPISODES, skip_short_folders: bool = False):
        super().__init__()
        if segment_length < 2:
            raise ValueError(f"segment_length must be >= 2 (got {segment_length}).")
        weights = dict(folders) if isinstance(folders, dict) else {f: 1.0 for f in folders}
        if not weights:
            raise ValueError("SegmentDataset needs at least one folder of episodes.")
        if any(not np.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"folder weights must be non-negative with a positive sum, got {weights}.")
        steps = frame_step if isinstance(frame_step, dict) else {f: frame_step for f in weights}
        unknown = sorted(set(steps) - set(weights))
        if unknown:
            raise ValueError(f"frame_step names folders that are not in the dataset: {unknown}.")
        self.segment_length = segment_length
        self.skip_bad = skip_bad
        self.seed = seed
        self.cache_episodes = max(1, cache_episodes)
        self.image_size, self.action_dim = image_size, action_dim

        self.folders: list[str] = []
        self.frame_steps: list[int] = []
        self.entries: list[list[EpisodeEntry]] = []  # per folder
        self.num_segments: list[np.ndarray] = []  # per folder, per episode
        folder_weights = []
        for folder, weight in weights.items():
            k = int(steps.get(folder, 1))
            if k < 1:
                raise ValueError(f"frame_step for {folder} must be >= 1 (got {k}).")
            entries = self._index_folder(folder)
            span = (segment_length - 1) * k  # transitions a segment covers
            counts = np.array([max(0, e.steps - span + 1) for e in entries], dtype=np.int64)
            short = int((counts == 0).sum())
            if short:
                log.warning("%s: %d of %d episodes are shorter than one segment of %d frames "
                            "at frame_step %d and are never sampled", folder, short, len(entries),
                            segment_length, k)
            if counts.sum() == 0 and weight > 0:
                problem = (f"folder {folder} has no episode long enough for a segment of "
                           f"{segment_length} frames at frame_step {k} ({len(entries)} episodes)")
                if not skip_short_folders:
                    raise ValueError(problem + ".")
                log.warning("%s: left out", problem)
                continue
            self.folders.append(str(folder))
            self.frame_steps.append(k)
            self.entries.append(entries)
            self.num_segments.append(counts)
            folder_weights.append(float(weight))
        if sum(folder_weights) <= 0:
            raise ValueError(f"no folder of {sorted(weights)} with a positive weight has an episode long "
                             f"enough for a segment of {segment_length} frames.")
        self.folder_probs = np.array(folder_weights) / sum(folder_weights)
        self.folder_cdf = np.cumsum(self.folder_probs)
        self.episode_cdfs = [np.cumsum(c) / max(1, c.sum()) for c in self.num_segments]
        # (folder, episode) found unreadable on load (skip_bad), per worker: redrawn without reloading
        self.bad_episodes: set[tuple[int, int]] = set()
        self._check_dims()

    # ----- indexing -----
    def _index_folder(self, folder: str) -> list[EpisodeEntry]:
        paths = episode_paths(folder)
        if not paths:
            raise FileNotFoundError(f"episode folder {folder} holds no .npz episode files.")
        entries = []
        for path in filter(self._indexes, paths):
            try:
                shapes = _npz_shapes(path)
                entry = EpisodeEntry(path, shapes["action"][0], shapes["obs"][-1], shapes["action"][1])
                if self.image_size is not None and entry.image_size != self.image_size:
                    raise EpisodeFormatError(path, f"frames are {entry.image_size}x{entry.image_size} "
                                                   f"but the run uses {self.image_size}x{self.image_size}")
                if self.action_dim is not None and entry.action_dim != self.action_dim:
                    raise EpisodeFormatError(path, f"actions have {entry.action_dim} dims but the run "
                                                   f"uses {self.action_dim}")
            except EpisodeFormatError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping %s", e)
                continue
            entries.append(entry)
        return entries

    def _indexes(self, path: Path) -> bool:
        """Whether the episode file at ``path`` belongs to this dataset (a subclass may keep a subset,
        e.g. a held-out split, without reading the headers of the files it leaves out)."""
        return True

    def _check_dims(self) -> None:
        sizes = {e.image_size for f in self.entries for e in f}
        out_dims = {e.action_dim * k for f, k in zip(self.entries, self.frame_steps) for e in f}
        if len(sizes) > 1:
            raise ValueError(f"the folders mix frame sizes {sorted(sizes)}; convert them to one "
                             "size or pass image_size to find the odd files.")
        if len(out_dims) > 1:
            raise ValueError(f"segments would have action sizes {sorted(out_dims)} (action dim x "
                             "frame_step) across folders; a batch needs one size.")
        self.image_size = sizes.pop() if sizes else self.image_size
        self.segment_action_dim = out_dims.pop() if out_dims else 0

    # ----- sampling -----
    def _load(self, cache: OrderedDict, entry: EpisodeEntry) -> Episode:
        key = str(entry.path)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        episode = load_episode(entry.path, image_size=self.image_size, action_dim=entry.action_dim)
        cache[key] = episode
        if len(cache) > self.cache_episodes:
            cache.popitem(last=False)
        return episode

    def sample(self, rng: np.random.Generator, cache: OrderedDict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """One segment: (obs uint8 [T,3,H,W], action [T-1,k*A], reward [T-1], folder index).

        An unreadable episode (``skip_bad``) is redrawn from the same folder with the same ``rng``,
        over the distributions as built: so the segment an ``rng`` state gives depends on which files
        are bad, never on which of them this worker happened to find before (a keyed batch stays a
        pure function of its key), and a folder's weight is kept. The redraws end: every failed load
        marks one more episode bad, and ``_mark_bad`` fails once the folder has no readable one left
        (a readable episode with segments is drawn with positive probability)."""
        cache = OrderedDict() if cache is None else cache
        f = _draw(rng, self.folder_cdf)
        while True:
            i = _draw(rng, self.episode_cdfs[f])
            if (f, i) in self.bad_episodes:
                continue
            try:
                episode = self._load(cache, self.entries[f][i])
            except EpisodeFormatError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping %s", e)
                self._mark_bad(f, i)
                continue
            start = int(rng.integers(self.num_segments[f][i]))
            return (*self.cut(episode, start, self.frame_steps[f]), f)

    def _mark_bad(self, f: int, i: int) -> None:
        """Never load a bad episode again (in this worker); fail once a folder has no readable one."""
        self.bad_episodes.add((f, i))
        readable = [j for j in np.flatnonzero(self.num_segments[f]) if (f, int(j)) not in self.bad_episodes]
        if not readable:
            raise RuntimeError(f"no readable episode is left in {self.folders[f]}.")

    def cut(self, episode: Episode, start: int, k: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The segment of ``segment_length`` frames at ``start`` with frame step ``k``."""
        n = self.segment_length - 1  # intervals
        stop = start + n * k  # index of the last kept frame
        assert stop <= len(episode), "segment crosses the episode end"
        obs = episode.obs[start:stop + 1:k]  # [T, 3, H, W]
        action = episode.action[start:stop].reshape(n, k * episode.action_dim)  # [T-1, k*A]
        reward = episode.reward[start:stop].reshape(n, k).sum(1)  # [T-1]
        return torch.from_numpy(obs.copy()), torch.from_numpy(action.copy()), torch.from_numpy(reward)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rank = int(os.environ.get("RANK", 0))  # each process of a distributed run draws its own segments
        rng = np.random.default_rng([self.seed, rank, worker])
        cache: OrderedDict = OrderedDict()
        while True:
            obs, action, reward, _ = self.sample(rng, cache)
            yield obs, action, reward


def collate_segments(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> SegmentBatch:
    obs, action, reward = zip(*samples)
    return SegmentBatch(obs=torch.stack(obs), action=torch.stack(action), reward=torch.stack(reward))


def segment_loader(dataset: SegmentDataset, batch_size: int, num_workers: int = 0,
                   pin_memory: bool = False) -> DataLoader:
    """An endless DataLoader of ``SegmentBatch`` (obs [B,T,3,H,W], action [B,T-1,k*A], reward [B,T-1])."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=collate_segments, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)
