"""Collect demonstrations in the simulator at the task's env settings.

    python scripts/collect_demos.py task=metaworld/plate_slide episodes=5
    python scripts/collect_demos.py task=metaworld/hammer episodes=200 noise=0.1 workers=2 out=corpus/hammer
    python scripts/collect_demos.py task=maniskill/pick_cube episodes=10     # ManiSkill motion planner

Meta-World uses its scripted expert policies; ManiSkill its motion-planning solutions (needs
the maniskill extra, and mplib 0.1.1, which crashes with numpy>=2: collect in a venv with
numpy<2, README "Demonstrations"). The motion planner plans whole successful trajectories in
this process, so noise, workers and success_only=false are refused for it. DMC and LIBERO have
no scripted expert: the error says how to get their demonstrations. Episodes go to the task's
demonstration folder (mbrl.demos.demo_dir) unless out=... Config: cfgs/collect_demos.yaml.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mbrl.demos import demo_dir  # noqa: E402
from mbrl.demos.collect import (CollectEnvError, CollectResult, CollectSettingsError,  # noqa: E402
                                NoExpertError, TooFewSuccessesError, collect)
from mbrl.envs.errors import MissingSimulatorError, UnknownTaskError  # noqa: E402
from mbrl.utils import user_errors  # noqa: E402
from worldmodel.episodes import episode_paths  # noqa: E402

if TYPE_CHECKING:
    from mbrl.demos.maniskill import MotionPlanningResult

# What a user can fix (the message says how): printed as one line, exit status 1.
USER_ERRORS = (MissingSimulatorError, UnknownTaskError, NoExpertError, CollectSettingsError,
               TooFewSuccessesError, CollectEnvError)
DEFAULT_WORKERS = 2  # worker processes of collect() when workers is not set


@hydra.main(config_path="../cfgs", config_name="collect_demos", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out) if cfg.out else demo_dir(cfg.task)
    if out.is_dir() and episode_paths(out) and not cfg.overwrite:
        sys.exit(f"{out} already holds episodes; pass overwrite=true to add to / replace them, "
                 "or out=<another folder>.")
    with user_errors("collect_demos", USER_ERRORS):
        result = run_collection(cfg, out)
    hours = result.seconds / 3600
    print(f"wrote {len(result.paths)} episodes to {out}: {result.successes}/{result.attempts} "
          f"attempts succeeded; {result.seconds:.1f} s, {len(result.paths) / hours:.0f} episodes/h, "
          f"{result.frames / hours:.0f} frames/h")


def check_motion_planning_settings(cfg: DictConfig) -> None:
    """Refuse the keys ManiSkill's motion planner cannot honour (rather than ignore them): it plans
    whole trajectories (no per-action noise), keeps only the ones that succeed when replayed in our
    env, and runs in this process."""
    if cfg.noise != 0:
        raise CollectSettingsError(f"noise={cfg.noise}: ManiSkill's motion planner plans whole trajectories and "
                                   "takes no action noise; use noise=0, or policy=random for noisy data")
    if not cfg.success_only:
        raise CollectSettingsError("success_only=false: ManiSkill's motion planner keeps only the trajectories "
                                   "that succeed; use success_only=true, or policy=random success_only=false")
    if cfg.workers not in (None, 1):
        raise CollectSettingsError(f"workers={cfg.workers}: ManiSkill's motion planner runs in this process; "
                                   "leave workers unset (or 1)")


def run_collection(cfg: DictConfig, out: Path) -> CollectResult | MotionPlanningResult:
    """The suite's collector: ManiSkill's motion planner for its expert, else ``collect``."""
    if cfg.task.suite == "maniskill" and cfg.policy == "expert":
        check_motion_planning_settings(cfg)
        from mbrl.demos.maniskill import collect_motionplanning
        return collect_motionplanning(cfg.task, cfg.episodes, out, seed=cfg.seed,
                                      max_attempts=cfg.max_attempts)
    workers = DEFAULT_WORKERS if cfg.workers is None else cfg.workers
    return collect(cfg.task, cfg.episodes, out, seed=cfg.seed, noise=cfg.noise,
                   workers=workers, policy=cfg.policy, success_only=cfg.success_only,
                   max_attempts=cfg.max_attempts)


if __name__ == "__main__":
    main()
