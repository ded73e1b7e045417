"""Demonstrations: where they live and how a run loads them (``demo=true``).

    demonstrations/<suite>/<task>/*.npz     episode files (worldmodel/episodes.py format)

``<task>`` is the task config's file name (``cfgs/task/metaworld/plate_slide.yaml`` ->
``plate_slide``), derived from ``task_cfg.name`` (``plate-slide-v3``, ``PickCube-v1``,
``walker_walk``) unless the task config sets ``demo_dir``; LIBERO adds ``task_<task_index>``
(``demonstrations/libero/libero_spatial/task_0``). Collect them with
``scripts/collect_demos.py`` (Meta-World, ManiSkill) or convert downloaded ones with
``scripts/convert_demos.py`` (LIBERO, ManiSkill); DMC has no scripted expert: copy in episodes
recorded at the task's settings (``collect_command`` says how for each suite).

Each file records the env settings it was made with (``meta["env_settings"]``: the task keys
in ``ENV_SETTING_KEYS``); ``load_demos`` refuses a demonstration whose settings differ from the
run's, since its rewards, frames or time scale would not be the run's (another
``episode_length`` only moves where episodes are cut: a warning).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from worldmodel.episodes import Episode, EpisodeFormatError, episode_paths, load_episode

log = logging.getLogger(__name__)

# Where demonstrations live unless MBRL_DEMO_ROOT says otherwise: the repo's demonstrations/.
DEMO_ROOT_ENV = "MBRL_DEMO_ROOT"
DEFAULT_DEMO_ROOT = Path(__file__).resolve().parents[2] / "demonstrations"


# Task keys that shape a demonstration's data (time scale, rewards, frames, actions, ends).
ENV_SETTING_KEYS = ("action_repeat", "episode_length", "success_bonus", "camera", "flip_rows",
                    "fast_render", "control_mode", "reward_mode", "terminate_on_success")
SETTINGS_META_KEY = "env_settings"
# Keys a suite reads but that do not change its data: not recorded, not checked (SAPIEN has no fast mode).
NO_EFFECT_KEYS = {"maniskill": ("fast_render",)}
# Keys added to ENV_SETTING_KEYS after files recorded env_settings: such files were made at this value
# (the suites' default), except where their frames are not ours (the LIBERO converter's come from the file).
LATER_KEY_DEFAULTS = {"fast_render": True}
# Settings that only move where an episode is cut (a time limit, not a termination): a demo made
# with another value still holds the run's transitions, so a difference is reported, not refused.
ADVISORY_SETTING_KEYS = ("episode_length",)
# LIBERO's old frame setting (now task.flip_rows). It turned frames by 180 degrees where robosuite
# only flips rows: files whose frames it turned are mirrored left to right, the others translate.
RETIRED_ROTATE_KEY = "rotate_180"
LIBERO_CONVERTED_SOURCE = "libero_hdf5"  # meta["source"] of files made by the LIBERO converter
# What files written before ``env_settings`` existed record at the top level of their meta.
LEGACY_SETTING_KEYS = ("action_repeat", "episode_length")


class DemoSettingsError(ValueError):
    """A demonstration was made with other env settings than the run's."""


def demo_root() -> Path:
    return Path(os.environ.get(DEMO_ROOT_ENV, DEFAULT_DEMO_ROOT))


def task_slug(name: str) -> str:
    """``plate-slide-v3`` -> ``plate_slide``; ``PickCube-v1`` -> ``pick_cube``."""
    name = re.sub(r"-v\d+$", "", str(name))
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)  # CamelCase -> Camel_Case
    return name.replace("-", "_").lower()


def demo_dir(task_cfg: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """``<root>/<suite>/<task>``: the folder of this task's demonstrations."""
    if task_cfg.get("demo_dir"):
        return Path(task_cfg["demo_dir"])
    for key in ("suite", "name"):
        if not task_cfg.get(key):
            raise ValueError(f"task config is missing '{key}'; pass cfg.task (cfgs/task/<suite>/<task>.yaml)")
    folder = Path(root if root is not None else demo_root()) / str(task_cfg["suite"]) / task_slug(task_cfg["name"])
    # LIBERO configs name a benchmark suite; the task within it is task_index.
    return folder / f"task_{int(task_cfg['task_index'])}" if task_cfg.get("task_index") is not None else folder


def env_settings(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The task's values of ``ENV_SETTING_KEYS`` (those it sets): what collectors store in
    ``meta["env_settings"]``."""
    ignored = NO_EFFECT_KEYS.get(str(task_cfg.get("suite")), ())
    return {key: task_cfg[key] for key in ENV_SETTING_KEYS if task_cfg.get(key) is not None and key not in ignored}


def recorded_settings(meta: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the env settings an episode's meta records, whether it records them as a whole).
    Old files lack ``env_settings``: then only the top-level keys they have."""
    settings = meta.get(SETTINGS_META_KEY)
    if isinstance(settings, Mapping):
        return dict(settings), True
    return {key: meta[key] for key in LEGACY_SETTING_KEYS if key in meta}, False


def _same_setting(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # the env parses "false" / 0 as False too
        from mbrl.envs import boolean
        try:
            return boolean(a) == boolean(b)
        except ValueError:
            return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):  # 10 == 10.0
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _override(value: Any) -> str:
    """A value as it is written on the Hydra command line."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def check_settings(path: Path, meta: Mapping[str, Any], task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Raise ``DemoSettingsError`` if the episode was made with other env settings than the
    run's. Returns what to warn about: {key: recorded value} for a differing advisory key, and
    {key: None} for a run setting the file does not record (files older than the check)."""
    recorded, complete = recorded_settings(meta)
    if RETIRED_ROTATE_KEY in recorded:
        rotated = _same_setting(recorded.pop(RETIRED_ROTATE_KEY), True)
        converted = meta.get("source") == LIBERO_CONVERTED_SOURCE
        if rotated != converted:  # converted upright-and-mirrored, or rendered turned by 180 degrees
            raise DemoSettingsError(
                f"demonstration {path} was made with LIBERO's old task.rotate_180, whose frames are mirrored left "
                f"to right or turned (robosuite only flips rows; now task.flip_rows). Move the files out of "
                f"{path.parent} and convert or collect them again: {collect_command(task_cfg)}.")
        # robosuite's own upside-down frames (converted unturned), or upright env frames (rendered unturned)
        recorded.setdefault("flip_rows", converted)
    if complete and meta.get("source") != LIBERO_CONVERTED_SOURCE:
        recorded = {**LATER_KEY_DEFAULTS, **recorded}
    notes: dict[str, Any] = {}
    for key, value in env_settings(task_cfg).items():
        if key not in recorded:
            if not complete:
                notes[key] = None
        elif _same_setting(recorded[key], value):
            continue
        elif key in ADVISORY_SETTING_KEYS:
            notes[key] = recorded[key]
        else:
            raise DemoSettingsError(
                f"demonstration {path} was made with task.{key}={_override(recorded[key])} but this run "
                f"has task.{key}={_override(value)}. Run with task.{key}={_override(recorded[key])}, or move "
                f"the files out of {path.parent} and make new ones at the run's settings: "
                f"{collect_command(task_cfg, overrides=[f'task.{key}={_override(value)}'])}.")
    return notes


def _warn_settings(folder: Path, notes: dict[str, set], task_cfg: Mapping[str, Any]) -> None:
    """One warning per kind of note that ``check_settings`` gave over a folder."""
    unrecorded = [k for k in ENV_SETTING_KEYS if None in notes.get(k, ())]
    if unrecorded:
        log.warning("demonstrations in %s do not record %s (made before these were stored), so they "
                    "cannot be checked against the run; re-collect them to be sure: %s",
                    folder, ", ".join(f"task.{k}" for k in unrecorded), collect_command(task_cfg))
    for key in ADVISORY_SETTING_KEYS:
        values = sorted(_override(v) for v in notes.get(key, ()) if v is not None)
        if values:
            log.warning("demonstrations in %s were made with task.%s=%s, this run has %s: their "
                        "episodes end at another step (their transitions are the run's).",
                        folder, key, "/".join(values), _override(task_cfg[key]))


def collect_command(task_cfg: Mapping[str, Any], episodes: int = 5, overrides: Sequence[str] = (),
                    root: str | os.PathLike | None = None) -> str:
    """How to make this task's demonstrations (with ``overrides``, e.g. ``task.camera=topview``):
    scripts/collect_demos.py where the suite has a scripted expert or motion planner, the
    LIBERO converter for LIBERO, and for DMC, which has neither, what to copy into its
    demonstration folder (under ``root``) instead."""
    suite, slug = task_cfg.get("suite"), task_slug(task_cfg.get("name", "<task>"))
    extra = "".join(f" {o}" for o in overrides)
    if suite == "libero":
        return (f"python scripts/convert_demos.py format=libero input=<LIBERO demo .hdf5> "
                f"task=libero/{slug} task.task_index={task_cfg.get('task_index')}{extra}")
    if suite == "dmc":
        return (f"there is no scripted expert for DMC (nothing for scripts/collect_demos.py to run): copy "
                f"episode files recorded at the run's task settings into {demo_dir(task_cfg, root)}, e.g. the last "
                f"episodes (runs/dmc/{slug}/none/<run>/episodes/*.npz) of a trained "
                f"`python mbrl/train_mbpo.py task=dmc/{slug} world_model=none{extra}` run")
    command = f"python scripts/collect_demos.py task={suite}/{slug} episodes={episodes}{extra}"
    if suite == "maniskill":  # mplib 0.1.1 segfaults under numpy 2 (mbrl.demos.maniskill.numpy_conflict)
        command += " in a venv with numpy<2 (ManiSkill's motion planner crashes with numpy 2; README, Demonstrations)"
    return command


def _or_convert(task_cfg: Mapping[str, Any]) -> str:
    """The converter as an alternative, for the suites whose demonstrations are collected."""
    if task_cfg.get("suite") in ("libero", "dmc"):
        return ""
    return " (or convert downloaded ones with scripts/convert_demos.py)"


def load_demos(task_cfg: Mapping[str, Any], image_size: int, action_dim: int,
               root: str | os.PathLike | None = None, skip_bad: bool = False) -> list[Episode]:
    """All demonstration episodes of the task, checked against the run's frame size, action
    dim and env settings (``DemoSettingsError`` on a mismatch, whatever ``skip_bad``; a warning
    for another episode_length, and for old files that do not record the settings). Raises
    ``FileNotFoundError`` (with the command that makes them) when there are none."""
    folder = demo_dir(task_cfg, root)
    paths = episode_paths(folder) if folder.is_dir() else []
    if not paths:
        what = "is missing" if not folder.is_dir() else "holds no .npz episodes"
        raise FileNotFoundError(
            f"demo=true but the demonstration folder {folder} {what}. To make them: "
            f"{collect_command(task_cfg, root=root)}{_or_convert(task_cfg)}.")
    episodes: list[Episode] = []
    notes: dict[str, set] = {}
    for path in paths:
        try:
            episode = load_episode(path, image_size=image_size, action_dim=action_dim)
        except EpisodeFormatError as e:
            if not skip_bad:
                hint = collect_command(task_cfg, root=root)
                raise EpisodeFormatError(path, f"{e.fault}. Re-collect with: {hint}") from None
            log.warning("skipping %s", e)
            continue
        for key, value in check_settings(path, episode.meta, task_cfg).items():
            notes.setdefault(key, set()).add(value)
        episodes.append(episode)
    if not episodes:
        raise FileNotFoundError(f"no readable demonstration in {folder}; re-collect with: "
                                f"{collect_command(task_cfg, root=root)}")
    _warn_settings(folder, notes, task_cfg)
    return episodes
