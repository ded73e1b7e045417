"""Replay a fixed-shape computation as a CUDA graph: one launch instead of hundreds.

Imagination repeats the same small computations (one transformer token, one frame's decoding)
hundreds of times per rollout at a fixed batch size; on a GPU their cost is the Python and
kernel-launch overhead, not the arithmetic. ``GraphedCall`` captures such a function once and
replays it. The function must not synchronise with the host (no ``.item()``, no data-dependent
shapes) and must read module parameters in place (optimiser steps update them in place, so a
graph captured before training stays valid).
"""
from __future__ import annotations

from typing import Callable

import torch

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


class GraphedCall:
    """``call(*inputs)`` = ``fn(*inputs)``, eager off CUDA, a replayed CUDA graph on it.

    On CUDA the inputs are copied into static buffers shaped like the first call's; the first
    call warms up on a side stream and captures (under the caller's autocast and grad mode).
    The returned tensors are the graph's static outputs: read or copy them before the next call."""

    def __init__(self, fn: Callable[..., Outputs]):
        self.fn = fn
        self.inputs: list[torch.Tensor] = []
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Outputs | None = None

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        if not inputs[0].is_cuda:
            return self.fn(*inputs)
        # Streams, capture and replay on the inputs' GPU, which need not be the current one (cuda:1).
        with torch.cuda.device(inputs[0].device):
            return self._replay(inputs)

    def _replay(self, inputs: tuple[torch.Tensor, ...]) -> Outputs:
        if self.graph is None:
            self.inputs = [t.clone() for t in inputs]
            # Autocast's cache of casted weights must be off: a cached cast made outside the
            # graph would be read by every replay (stale after an optimiser step, freed later).
            autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                      enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), autocast:  # cuBLAS workspaces, lazy initialisation
                self.fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), autocast:
                self.outputs = self.fn(*self.inputs)
        else:
            for buffer, t in zip(self.inputs, inputs):
                if t.shape != buffer.shape:  # copy_ would broadcast into the captured shapes silently
                    captured = [tuple(b.shape) for b in self.inputs]
                    raise ValueError(f"this CUDA graph was captured for inputs {captured}; got "
                                     f"{[tuple(x.shape) for x in inputs]}: make one GraphedCall per shape.")
                buffer.copy_(t)
        self.graph.replay()
        return self.outputs
