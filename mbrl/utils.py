"""Small shared helpers: seeding, device choice, atomic writes, timing."""
from __future__ import annotations

import os
import random
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from worldmodel.atomic_file import atomic_write


class ConfigValueError(ValueError):
    """A config value that cannot work here; the message says what to use instead."""


def set_seed_everywhere(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, option: str = "device=") -> torch.device:
    """`auto` picks CUDA when available; anything else is passed to torch, checked. ``option``:
    how the setting is written where it came from (``device=`` in configs, ``--device `` in scripts)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigValueError(f"{option}{name} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(f"{option}{name} asked for CUDA, but torch sees no GPU "
                               f"(torch {torch.__version__}); use {option}auto or {option}cpu.")
    return device


def script_device(name: str) -> torch.device:
    """``resolve_device`` for a script's ``--device`` option: one line and exit 1 where it cannot work."""
    try:
        return resolve_device(name, option="--device ")
    except ConfigValueError as e:
        raise SystemExit(f"error: {e}") from None


def int_at_least(text: str, minimum: int) -> int:
    """``text`` as a whole number >= ``minimum``, or argparse's usage error naming the problem."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for a script's counts: a whole number of at least 1 (else argparse's usage error)."""
    return int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for a size that may be 0 (e.g. an action-free model's action width)."""
    return int_at_least(text, 0)


@contextmanager
def user_errors(program: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Errors in the user's config or data: their message names the fix, so print it as one line
    (``[program] error: ...``) and exit 1 instead of burying it under a traceback."""
    try:
        yield
    except errors as e:
        print(f"[{program}] error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def insert_override(args: list[str], override: str) -> list[str]:
    """``args`` with ``override`` right after the user's last ``key=value``: not after Hydra's own
    flags (``--cfg job``, ``--help``), whose argparse would then refuse it."""
    last = max((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), default=-1)
    return args[:last + 1] + [override] + args[last + 1:]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically (``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


class SectionTimer:
    """Accumulates wall time per named section (env, agent, world model, imagination...).
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs at each section's end, so that GPU work
    queued in a section is billed to it rather than to the next one that waits for the GPU."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.totals: dict[str, float] = {}
        self.sync = sync

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals
