"""A pretraining output keeps the settings it started with.

Re-running ``scripts/pretrain.py`` resumes its ``out`` directory. Without a check, a re-run with
another ``batch_size``, ``grad_accum``, learning rate, data mix or number of processes would
continue the same stage under those settings: the data positions (``data.py``: the step count times
the micro-batches per step), the LR schedule and the effective batch change mid-stage, and the
result is neither run. So the first launch writes the learning settings to ``run_settings.json``,
and a launch that finds progress (a finished stage or a checkpoint) and other values is refused.

Settings that do not change what is learned may change on a re-run: where and how often the run
logs, evaluates and saves (``log.*``, ``eval.*`` other than the held-out split,
``checkpoint.*``), data loading (workers, cache, the root folder the data was moved to), memory
and DDP options, and the steps of stages that have not started.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from worldmodel.atomic_file import atomic_write
from worldmodel.interface import WorldModelConfigError

SETTINGS_NAME = "run_settings.json"
# Keys (or key prefixes ending in ".") that may differ between launches of one output directory.
NOT_LEARNING_KEYS = ("out", "log.", "eval.", "checkpoint.", "steps.", "data_loader.num_workers",
                     "data_loader.cache_episodes", "data_loader.root", "data.root", "keep_freed_memory",
                     "find_unused_parameters")
HELD_OUT_KEY = "eval.held_out"  # the split that the training data is what remains of
PROCESSES_KEY = "num_processes"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config -> {"a.b.c": value}; values other than numbers, strings and bools as str."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _learning(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_LEARNING_KEYS)


def started_stages(out: Path) -> list[str]:
    """Names of the stages that have a checkpoint or are finished in ``out``
    (``stages/<i>-<name>``, ``checkpoints/<i>-<name>/step-*``)."""
    names = {d.name.split("-", 1)[1] for d in (out / "stages").glob("[0-9]*-*") if d.is_dir()}
    names |= {d.name.split("-", 1)[1] for d in (out / "checkpoints").glob("[0-9]*-*") if any(d.glob("step-*"))}
    return sorted(names)


def learning_settings(cfg: Mapping[str, Any], num_processes: int) -> dict[str, str]:
    """What must stay the same for ``out`` to hold one run: the learning keys of ``cfg``
    (``cfgs/pretrain.yaml``'s, resolved), the held-out split, the number of processes and the
    steps of each stage (an LR schedule spans its stage's steps)."""
    settings = {k: json.dumps(v) for k, v in flatten(cfg).items() if _learning(k)}
    ev = cfg["eval"]
    # build_datasets: held-out folders leave the whole mix to training; else a share of its files
    held_out = {"folders": list(ev["val_folders"])} if ev["val_folders"] else {
        "fraction": ev["val_fraction"] if ev["every"] else 0}
    settings[HELD_OUT_KEY] = json.dumps(held_out, sort_keys=True, default=str)
    settings[PROCESSES_KEY] = json.dumps(int(num_processes))
    settings.update({f"steps.{name}": json.dumps(n) for name, n in cfg["steps"].items()})
    return settings


def check_resume_settings(out: Path, cfg: Mapping[str, Any], num_processes: int, write: bool) -> None:
    """Refuse a launch that would continue ``out``'s progress under other learning settings (the
    steps of a stage that has not started may change); else keep this launch's settings as the
    run's (``write``: the main process)."""
    out = Path(out)
    path = out / SETTINGS_NAME
    now = learning_settings(cfg, num_processes)
    stages = started_stages(out)
    if stages and path.is_file():
        saved = json.loads(path.read_text())
        changes = {k: (saved[k], now[k]) for k in sorted(set(saved) & set(now))
                   if saved[k] != now[k] and not (k.startswith("steps.") and k[len("steps."):] not in stages)}
        if changes:
            listed = ", ".join(f"{k}={old} (this launch: {new})" for k, (old, new) in changes.items())
            raise WorldModelConfigError(
                f"{out} was trained with {listed}. A re-run continues the same run, so its learning settings "
                f"stay: re-run with those values (stages with progress: {', '.join(stages)}), or give another "
                "out= to train anew (init_from=<out> fine-tunes its weights).")
    if write:
        atomic_write(path, lambda f: f.write(json.dumps(now, indent=2, sort_keys=True).encode()))
