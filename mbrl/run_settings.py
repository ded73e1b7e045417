"""A run dir keeps the settings it was trained with when it is launched again.

Hydra rewrites ``.hydra/config.yaml`` (and ``hydra.yaml``, ``overrides.yaml``) every time a job
starts, a resumed run included, and the curves (``mbrl/analysis/curves.py``) read a run's settings
from there. So ``resume=true agent.lr=0.5`` would continue a run under another learning rate and
relabel what it learned before, and pool it with seeds it does not match. At a run's first start
a copy of Hydra's files is kept in ``.hydra/started_with/``. A relaunch with other learning
settings (or another seed, task or preset) is refused and the run's own files are put back; one
that changes only where the run stops, how often it evaluates, saves or logs, or the device
(``curves.SCHEDULE_ONLY_KEYS``) continues the same run, and the copy follows it.

A key only one of the two launches has is a change when a launch's command line names it (saved in
its ``overrides.yaml``): a ``+key=`` the run started with and this launch drops, one this launch
adds, or one either launch deleted with ``~key``. Otherwise it is a key the code or the config
files added or removed since the run started (with its default), and the run goes on: refusing it
would leave such a run no way to finish.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from mbrl.analysis.curves import learning_settings
from mbrl.utils import ConfigValueError
from worldmodel.atomic_file import atomic_write
from worldmodel.training.run_settings import ABSENT, command_line_keys, set_by

HYDRA_DIR = ".hydra"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
STARTED_WITH_DIR = "started_with"  # under .hydra/: Hydra's files as the run's first start wrote them
# Keys the curves pool across (schedule-only for a curve) that still make another run of a run dir.
RUN_IDENTITY_KEYS = ("seed", "task.name", "task.task_index")
PRESET_KEY = "preset"  # the preset choice, from hydra.yaml's runtime.choices


def run_settings(config: Mapping[str, Any], preset: str | None) -> dict[str, str]:
    """What must stay the same for a run dir to hold one run: the learning settings of ``config``
    (a nested dict as Hydra saved it), its identity keys, and the preset."""
    settings = learning_settings(config)
    for key in RUN_IDENTITY_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        settings[key] = str(node)
    settings[PRESET_KEY] = str(preset)
    return settings


def saved_settings(hydra_dir: Path) -> dict[str, str]:
    """``run_settings`` of the Hydra files in ``hydra_dir``."""
    config = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"), resolve=False)
    runtime = hydra_dir / "hydra.yaml"
    preset = OmegaConf.select(OmegaConf.load(runtime), "hydra.runtime.choices.preset") if runtime.is_file() else None
    return run_settings(config, None if preset is None else str(preset))


def launch_keys(hydra_dir: Path) -> set[str] | None:
    """The config keys (or sections) the command line of the launch whose Hydra files are in
    ``hydra_dir`` set (``command_line_keys``); None when its ``overrides.yaml`` is not there."""
    overrides = hydra_dir / "overrides.yaml"
    if not overrides.is_file():
        return None
    runtime = hydra_dir / "hydra.yaml"
    choices = OmegaConf.select(OmegaConf.load(runtime), "hydra.runtime.choices") if runtime.is_file() else None
    return command_line_keys([str(o) for o in OmegaConf.load(overrides)], list(choices or ()))


def settings_changes(before: Mapping[str, str], after: Mapping[str, str], before_keys: set[str] | None = None,
                     after_keys: set[str] | None = None) -> dict[str, tuple[str, str]]:
    """{key: (before, after)} for every key both have with another value, and for a key only one
    side has when a command line names it (``before_keys``/``after_keys``, from ``launch_keys``:
    ``+key=`` adds it, ``~key`` deletes it; None: not known). Module docstring: why."""
    named = (before_keys or set()) | (after_keys or set())
    changes = {}
    for k in sorted(set(before) | set(after)):
        if k in before and k in after:
            if before[k] != after[k]:
                changes[k] = (before[k], after[k])
        elif set_by(k, named):
            changes[k] = (before[k], ABSENT) if k in before else (ABSENT, after[k])
    return changes


def describe_changes(run_dir: Path, changes: Mapping[str, tuple[str, str]]) -> str:
    """The refusal of a relaunch that would change a run's settings, with what to do instead."""
    listed = ", ".join(f"{k}={old} (this launch: {new})" for k, (old, new) in changes.items())
    keep = [f"{k}={old}" if new != ABSENT else f"++{k}={old}"  # ++: adds it, or overrides it if the config has it
            for k, (old, new) in changes.items() if k != PRESET_KEY and old != ABSENT]
    keep += [f"preset={changes[PRESET_KEY][0]}"] if PRESET_KEY in changes else []
    dropped = [k for k, (old, _) in changes.items() if old == ABSENT]
    how = " and ".join(([f"with {' '.join(keep)}"] if keep else [])
                       + ([f"without {', '.join(dropped)}"] if dropped else []))
    return (f"{run_dir} was trained with {listed}, from an override or a changed default. A run keeps its "
            f"settings: relaunch it {how} (its .hydra/{STARTED_WITH_DIR}/overrides.yaml lists "
            "the overrides it started with), or start a new run (another hydra.run.dir, or without resume=; "
            "for scripts/benchmark.py, another name=)")


def check_new_run_dir(run_dir: str | Path, holds_run: bool) -> None:
    """Refuse a launch without ``resume`` into a run dir that already holds a run (``holds_run``:
    episodes, a checkpoint or logs). It would overwrite that run's episodes and checkpoint from
    episode 0, append to its logs, and leave a mix that a later ``resume`` takes for one run. The
    run's own Hydra files, which this launch's Hydra just rewrote, are put back first."""
    if not holds_run:
        return
    restore_started_with(run_dir)
    raise ConfigValueError(
        f"{run_dir} already holds a run (episodes, a checkpoint or logs), and this launch has no resume=: "
        f"it would overwrite that run. Continue it with resume={run_dir}, or start a new run in another "
        "hydra.run.dir (or move that one away).")


def restore_started_with(run_dir: str | Path) -> None:
    """Put back the run's own Hydra files (from ``started_with/``), which a refused launch's Hydra
    rewrote before the refusal (the curves read a run's settings from them)."""
    hydra_dir = Path(run_dir) / HYDRA_DIR
    if (hydra_dir / STARTED_WITH_DIR / "config.yaml").is_file():
        _copy_files(hydra_dir / STARTED_WITH_DIR, hydra_dir)


def check_relaunch(run_dir: str | Path, resume: bool) -> None:
    """Keep a run's first settings, and refuse a resumed launch that changes them (module docstring).
    Does nothing for a run dir Hydra did not write (a Trainer built in code)."""
    hydra_dir = Path(run_dir) / HYDRA_DIR
    started_with = hydra_dir / STARTED_WITH_DIR
    if not (hydra_dir / "config.yaml").is_file():
        return
    if resume and (started_with / "config.yaml").is_file():
        changes = settings_changes(saved_settings(started_with), saved_settings(hydra_dir),
                                   launch_keys(started_with), launch_keys(hydra_dir))
        if changes:
            _copy_files(started_with, hydra_dir)  # the run's own settings, for the curves
            raise ConfigValueError(describe_changes(Path(run_dir), changes))
    _copy_files(hydra_dir, started_with)


def _copy_files(source: Path, target: Path) -> None:
    """Copy Hydra's files from ``source`` to ``target``, each one atomically."""
    for name in HYDRA_FILES:
        if (source / name).is_file():
            data = (source / name).read_bytes()
            atomic_write(target / name, lambda f: f.write(data))
