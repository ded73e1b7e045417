"""Convert downloaded demonstrations into episode files at the task's env settings.

    python scripts/convert_demos.py format=libero input=<LIBERO demo .hdf5> task=libero/libero_spatial task.task_index=0
    python scripts/convert_demos.py format=maniskill input=<trajectory .h5> task=maniskill/pick_cube

LIBERO: frames resized to the task's image size (flipped upright unless task.flip_rows); the
file must hold task.task_index's task (checked with LIBERO installed, or against libero_task=...);
ManiSkill: each trajectory replayed in our env from its recorded states (needs the maniskill
extra). Episodes go to the task's demonstration folder (mbrl.demos.demo_dir, as demo=true reads
them) unless out=... Config: cfgs/convert_demos.yaml.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mbrl.demos import demo_dir  # noqa: E402
from mbrl.demos.libero import (LiberoFormatError, LiberoTaskError, camera_stream, convert_libero,  # noqa: E402
                               libero_task_name)
from mbrl.demos.maniskill import ManiSkillFormatError, convert_maniskill  # noqa: E402
from mbrl.envs import boolean  # noqa: E402
from mbrl.envs.errors import MissingSimulatorError, UnknownTaskError  # noqa: E402
from mbrl.utils import user_errors  # noqa: E402
from worldmodel.episodes import EpisodeFormatError  # noqa: E402


class ConvertSettingsError(ValueError):
    """A conversion setting that cannot work (e.g. a format for another suite's task)."""


# What a user can fix (the message says how): printed as one line, exit status 1.
USER_ERRORS = (LiberoFormatError, LiberoTaskError, ManiSkillFormatError, EpisodeFormatError,
               MissingSimulatorError, UnknownTaskError, ConvertSettingsError)
EXAMPLE_TASKS = {"libero": "libero/libero_spatial task.task_index=0", "maniskill": "maniskill/pick_cube"}


@hydra.main(config_path="../cfgs", config_name="convert_demos", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out) if cfg.out else demo_dir(cfg.task)
    if not Path(cfg.input).is_file():
        sys.exit(f"input={cfg.input} is not a file")
    if cfg.format not in ("libero", "maniskill"):
        sys.exit(f"format={cfg.format} is not one of: libero, maniskill")
    with user_errors("convert_demos", USER_ERRORS):
        paths = convert(cfg, out)
    print(f"wrote {len(paths)} episodes to {out}")


def convert(cfg: DictConfig, out: Path) -> list[Path]:
    """Convert ``cfg.input`` in ``cfg.format`` (libero | maniskill) into episode files in ``out``."""
    if cfg.task.suite != cfg.format:  # each format is its suite's: its episodes fit no other task
        raise ConvertSettingsError(
            f"format={cfg.format} converts {cfg.format} demonstrations but task is {cfg.task.suite}/"
            f"{cfg.task.name}; pass a {cfg.format} task, e.g. task={EXAMPLE_TASKS[cfg.format]}")
    if cfg.format == "libero":
        flip = not boolean(cfg.task.get("flip_rows", False)) if cfg.flip_rows is None else boolean(cfg.flip_rows)
        expected = cfg.libero_task or libero_task_name(str(cfg.task.name), int(cfg.task.task_index))
        return convert_libero(cfg.input, out, int(cfg.task.image_size),
                              task=f"{cfg.task.suite}/{cfg.task.name}", flip_rows=flip,
                              camera=cfg.camera or camera_stream(str(cfg.task.camera)),
                              success_bonus=float(cfg.task.success_bonus),
                              max_demos=cfg.max_episodes, expected_task=expected)
    return convert_maniskill(cfg.input, cfg.task, out, success_only=cfg.success_only,
                             max_episodes=cfg.max_episodes)


if __name__ == "__main__":
    main()
