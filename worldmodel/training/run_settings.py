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

A key that only one of the two launches has: one the run's settings hold and this launch lacks is
a change (a ``+key=...`` the run started with and this launch drops), shown as ``(absent)``. One
only this launch has is a change when this launch's command line sets it (``key=``, ``+key=`` or
``++key=`` naming it or a section holding it, e.g. ``+world_model.model.tokenizer.dead_code_steps=2``):
that is the user changing what is learned. Otherwise it is a key the code or the config files added
(with its default) since the run started, and is accepted: refusing it would leave such a run no way
to finish. Group choices (``world_model=``, ``memory=``, the preset) are no key settings: what they
change shows up as changed values. Where the command line is unknown (``set_keys=None``: a
``Pretrainer`` built in code, not by Hydra), every key only this launch has counts as a change.
"""
from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any, Collection, Iterable, Mapping

from worldmodel.atomic_file import atomic_write
from worldmodel.interface import WorldModelConfigError

SETTINGS_NAME = "run_settings.json"
# Keys (or key prefixes ending in ".") that may differ between launches of one output directory.
NOT_LEARNING_KEYS = ("out", "log.", "eval.", "checkpoint.", "steps.", "data_loader.num_workers",
                     "data_loader.cache_episodes", "data_loader.root", "data.root", "keep_freed_memory",
                     "find_unused_parameters", "world_model.model.gradient_checkpointing")
HELD_OUT_KEY = "eval.held_out"  # the split that the training data is what remains of
PROCESSES_KEY = "num_processes"
ABSENT = "(absent)"  # how a key one launch lacks is shown
# a value override on Hydra's command line: `key=`, `+key=`, `++key=` (`~key` deletes: then absent)
_OVERRIDE = re.compile(r"^(?:\+\+|\+|~)?([A-Za-z0-9_.\-/@]+)(?:=|$)")


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


def command_line_keys(overrides: Iterable[str], groups: Collection[str] = ()) -> set[str]:
    """The config keys (or sections) a launch's Hydra overrides set, e.g. ``+a.b=1`` -> ``a.b``;
    group choices (``groups``: Hydra's ``runtime.choices``, e.g. ``memory``,
    ``world_model_preset@world_model``) and ``hydra.*`` are left out."""
    keys = set()
    for override in overrides:
        match = _OVERRIDE.match(override.strip())
        if not match:
            continue
        key = match.group(1)
        if key in groups or "@" in key or "/" in key or key == "hydra" or key.startswith("hydra."):
            continue
        keys.add(key)
    return keys


def set_by(key: str, set_keys: Collection[str]) -> bool:
    """Whether ``key`` is one of ``set_keys`` (``command_line_keys``) or inside a section one names."""
    return any(key == k or key.startswith(k + ".") for k in set_keys)


def settings_changes(saved: Mapping[str, str], now: Mapping[str, str], stages: Collection[str],
                     set_keys: Collection[str] | None) -> dict[str, tuple[str, str]]:
    """{key: (the run's value, this launch's)} over the keys either side has (module docstring:
    which keys only one side has count); the steps of a stage not yet started may change."""
    changes = {}
    for k in sorted(set(saved) | set(now)):
        if k.startswith("steps.") and k[len("steps."):] not in stages:
            continue
        if k not in saved and set_keys is not None and not set_by(k, set_keys):
            continue  # a default the code added since the run started
        old, new = saved.get(k, ABSENT), now.get(k, ABSENT)
        if old != new:
            changes[k] = (old, new)
    return changes


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


def check_resume_settings(out: Path, cfg: Mapping[str, Any], num_processes: int, write: bool,
                          set_keys: Collection[str] | None = None) -> None:
    """Refuse a launch that would continue ``out``'s progress under other learning settings (the
    steps of a stage that has not started may change); else keep this launch's settings as the
    run's (``write``: the main process). ``set_keys``: the keys this launch's command line sets
    (``command_line_keys``), None if unknown (module docstring)."""
    out = Path(out)
    path = out / SETTINGS_NAME
    now = learning_settings(cfg, num_processes)
    stages = started_stages(out)
    if stages and path.is_file():
        saved = json.loads(path.read_text())
        changes = settings_changes(saved, now, stages, set_keys)
        if changes:
            listed = ", ".join(f"{k}={old} (this launch: {new})" for k, (old, new) in changes.items())
            raise WorldModelConfigError(
                f"{out} was trained with {listed}. A re-run continues the same run, so its learning settings "
                f"stay: re-run with those values ({ABSENT}: give +key=<value> for a key this launch lacks, leave out "
                f"the override of a key the run did not have; stages with progress: {', '.join(stages)}), or give "
                "another out= to train anew (init_from=<out> fine-tunes its weights).")
    if write:
        atomic_write(path, lambda f: f.write(json.dumps(now, indent=2, sort_keys=True).encode()))
