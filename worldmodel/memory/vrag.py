"""VRAG: retrieval-augmented context. Every past frame is stored with a key; for the next frame
the ``retrieved`` older frames whose keys are nearest to the query (weighted euclidean or cosine
distance) are put, in temporal order, before the recent ``window`` (reference: 10 + 10).

Retrieval candidates are the frames older than the recent window (as in the reference, so a
retrieved frame is never a duplicate of a window frame). Bounding policy: at most ``max_frames``
are stored; beyond that, among the frames older than the window, the closest pair of keys is
found and its newer frame dropped. This subsamples key space (one view per place) rather than
time, so the first view of a place, often a real frame, stays retrievable however long the
rollout.

Order of the retrieved frames: ours is temporal (oldest first), the same in training
(``training_clip``) and sampling, as both call ``select``. This differs from the official VRAG,
which puts the retrieved frames in order of similarity (most similar first) in training and
inference alike. We keep time order because the backbone reads the clip as a sequence: the
causal build lets a frame attend only to frames before it in the clip, the temporal convolution
mixes clip neighbours, and ``gaps`` gives a frame its stored action only when it follows its
clip predecessor in time; in time order all three mean what they mean on a plain window (the
past before the present), and a retrieved set that changes by one frame shifts few positions,
where a similarity order reshuffles them as the query moves. Not measured against the
reference's order; only the consistency between training and sampling matters for correctness.

When it selects anything: retrieval starts only once more frames are stored than the recent
window (the candidates are the frames older than it), and chooses only once there are more than
``retrieved`` candidates; before that the context is every stored frame, as with a window.
"""
from __future__ import annotations

import torch

from worldmodel.interface import WorldModelConfigError
from worldmodel.memory.base import Memory
from worldmodel.memory.keys import key_distance, pairwise_key_distance


class VRAGMemory(Memory):
    @property
    def needs_keys(self) -> bool:
        return True

    @property
    def min_segment_length(self) -> int:
        """A full context whose retrieved frames are chosen: with one candidate more than
        ``retrieved`` before the window (with exactly ``retrieved``, every clip would be the
        contiguous segment, and training would never see a retrieved frame's gap)."""
        return self.window + self.retrieved + 2 if self.retrieved else self.window + 1

    def weights(self, like: torch.Tensor) -> torch.Tensor | None:
        w = self.cfg.weights
        return None if w is None else torch.tensor(w, device=like.device, dtype=like.dtype)

    def _check(self, key: torch.Tensor | None, n: int) -> torch.Tensor:
        if key is None or key.shape[1] != n:
            raise WorldModelConfigError("the vrag memory needs a key for every stored frame.")
        if key.shape[-1] != self.cfg.key_width():
            raise WorldModelConfigError(
                f"keys have {key.shape[-1]} dims but memory.key={self.cfg.key} expects "
                f"{self.cfg.key_width()} (key_dim / key_size).")
        return key

    def retrieve(self, key: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
        """Positions [B, k] of the k keys [B, n, K] nearest to query [B, K], in temporal order."""
        dist = key_distance(key, query, self.weights(key), self.cfg.distance)  # [B, n]
        return dist.topk(k, dim=1, largest=False).indices.sort(dim=1).values

    def selects_beyond_window(self, stored: int) -> bool:
        return min(stored, self.capacity) > self.context_size  # else every stored frame is in the context

    def select(self, time: torch.Tensor, key: torch.Tensor | None = None,
               query: torch.Tensor | None = None) -> torch.Tensor:
        recent = self.recent(time)
        older_count = time.shape[1] - recent.shape[1]
        k = min(self.retrieved, older_count)
        if k == 0:
            return recent
        key = self._check(key, time.shape[1])
        if query is None:
            raise WorldModelConfigError("the vrag memory needs a query key for the next frame.")
        return torch.cat([self.retrieve(key[:, :older_count], query.to(key.dtype), k), recent], dim=1)

    def keep(self, time: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        B, n = time.shape
        keep = torch.ones(B, n, dtype=torch.bool, device=time.device)
        excess = n - self.capacity
        if excess <= 0:
            return torch.arange(n, device=time.device).expand(B, n)
        key = self._check(key, n)
        pool = n - self.window  # frames older than the window may go
        dist = pairwise_key_distance(key[:, :pool], self.weights(key), self.cfg.distance)  # [B, p, p]
        dist = dist + torch.triu(torch.full_like(dist[0], float("inf"))).T  # only (older i, newer j), i < j
        rows = torch.arange(B, device=time.device)
        for _ in range(excess):
            best, flat = dist.flatten(1).min(1)
            newer = flat % pool  # the newer frame of the closest pair (flat = older * pool + newer)
            oldest = keep[:, :pool].float().argmax(1)  # no pair left: drop the oldest kept instead
            newer = torch.where(torch.isinf(best), oldest, newer)
            keep[rows, newer] = False
            dist[rows, newer, :] = float("inf")
            dist[rows, :, newer] = float("inf")
        return keep.nonzero()[:, 1].view(B, n - excess)
