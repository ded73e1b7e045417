"""Memory for long imagination: which past frames condition the next one (window, history, VRAG)."""
from __future__ import annotations

from typing import Any

from worldmodel.memory.base import KeyedSegmentBatch, Memory, MemoryConfig, gaps
from worldmodel.memory.history import HistoryMemory
from worldmodel.memory.keys import LinearKeyDynamics, key_distance, key_offset, pixel_key
from worldmodel.memory.vrag import VRAGMemory
from worldmodel.memory.window import WindowMemory

MEMORIES: dict[str, type[Memory]] = {"window": WindowMemory, "history": HistoryMemory, "vrag": VRAGMemory}


def build_memory(cfg: "str | dict[str, Any] | MemoryConfig | None", default_window: int) -> Memory:
    """A memory from its name or config block; ``default_window`` fills an unset ``window``."""
    cfg = MemoryConfig.from_any(cfg)
    return MEMORIES[cfg.name](cfg, default_window)


__all__ = ["HistoryMemory", "KeyedSegmentBatch", "LinearKeyDynamics", "MEMORIES", "Memory", "MemoryConfig",
           "VRAGMemory", "WindowMemory", "build_memory", "gaps", "key_distance", "key_offset",
           "pixel_key"]
