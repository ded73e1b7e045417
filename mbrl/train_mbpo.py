"""Train a pixel-based agent: DrQ-v2 (world_model=none) or MBPO with a video world model.

    python mbrl/train_mbpo.py task=metaworld/plate_slide                 # MBPO + iVideoGPT
    python mbrl/train_mbpo.py task=metaworld/plate_slide world_model=none # DrQ-v2
    python mbrl/train_mbpo.py ... resume=true          # continue the latest run of this task/model/seed
    python mbrl/train_mbpo.py ... resume=runs/...      # continue that run

Without a ``preset=`` override, the reference preset is used on a CUDA machine and the ``cpu``
preset otherwise; the choice is printed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mbrl.utils import insert_override, user_errors  # noqa: E402

CONFIG_DIR = str(REPO_ROOT / "cfgs")
RUNS_DIR = Path("runs")


def check_overrides(args: list[str]) -> None:
    """Catch two command-line slips before Hydra, with the names that exist: a task without a
    config file (Hydra would not list the tasks), and ``+key=...`` for a top-level key the config
    does not have (Hydra suggests ``+`` for any unknown key, and the key would then be ignored)."""
    import difflib

    from omegaconf import OmegaConf

    task_dir = REPO_ROOT / "cfgs" / "task"
    tasks = sorted(str(p.relative_to(task_dir).with_suffix("")) for p in task_dir.rglob("*.yaml"))
    value = override_value(args, "task") or ""
    elsewhere = any(a.startswith(("--config-dir", "-cd", "hydra.searchpath", "+hydra.searchpath")) for a in args)
    if "(" in value or elsewhere:  # a sweep function (glob, choice, ...) or tasks from another config dir
        value = ""
    for task in (t.strip() for t in value.split(",")):
        if task and task not in tasks:
            close = difflib.get_close_matches(task, tasks, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise SystemExit(f"[train] task={task}: no cfgs/task/{task}.yaml; {hint}tasks: {', '.join(tasks)}")
    known = {k for k in OmegaConf.load(REPO_ROOT / "cfgs" / "config.yaml") if k not in ("defaults", "hydra")}
    known |= {p.name for p in (REPO_ROOT / "cfgs").iterdir() if p.is_dir()}  # config groups (+memory=vrag)
    for arg in args:
        key = arg[1:].split("=", 1)[0] if arg.startswith("+") and not arg.startswith("++") else ""
        if key and "." not in key and "@" not in key and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]}=...?" if close else ""
            raise SystemExit(f"[train] {arg}: {key} is not a key of cfgs/config.yaml, so it would be ignored{hint}")


def override_value(args: list[str], key: str) -> str | None:
    """The value of a ``key=value`` command-line override, or None if it is not given."""
    for arg in args:
        if arg.startswith(key + "="):
            return arg.split("=", 1)[1]
    return None


def choose_preset(args: list[str]) -> list[str]:
    """Add ``preset=cpu`` or ``preset=reference`` when the user gave none, and say which (on stderr,
    like the resume notices: stdout stays Hydra's, e.g. ``--cfg job > config.yaml``)."""
    if override_value(args, "preset") is not None:
        print(f"[train] preset={override_value(args, 'preset')} (given)", file=sys.stderr)
        return args
    import torch

    preset = "reference" if torch.cuda.is_available() else "cpu"
    why = "CUDA is available" if preset == "reference" else "no CUDA device: the CPU-sized schedule and world model"
    print(f"[train] preset={preset} ({why}; override with preset=reference|cpu)", file=sys.stderr)
    return insert_override(args, f"preset={preset}")



def resolve_resume(args: list[str]) -> list[str]:
    """``resume=<run dir>`` -> that dir; ``resume=true`` -> the latest run of the same task, world
    model and seed under runs/ (when ``hydra.run.dir`` is not given).

    In a multirun (``-m``) nothing is rewritten: each job's run dir is its deterministic sweep
    subdir, and ``resume=true`` makes the Trainer continue (or skip) whatever that subdir holds
    (scripts/benchmark.py relies on this)."""
    resume = override_value(args, "resume")
    if resume in (None, "false", "False") or override_value(args, "hydra.run.dir") is not None:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        if resume not in ("true", "True"):
            raise SystemExit("[train] in a multirun, use resume=true (each job resumes its own sweep subdir), "
                             f"not resume={resume}")
        return args
    rest = [a for a in args if not a.startswith("resume=")]
    if resume not in ("true", "True"):
        if not Path(resume).is_dir():
            raise SystemExit(f"[train] resume={resume}: no such run directory")
        return insert_override(insert_override(rest, "resume=true"), f"hydra.run.dir={resume}")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=[a for a in rest if not a.startswith("hydra.")],
                      return_hydra_config=True)
    parent = RUNS_DIR / cfg.hydra.runtime.choices.task / cfg.world_model.name
    from mbrl.trainer import has_progress

    runs = sorted(p for p in parent.glob(f"*_seed{cfg.seed}") if has_progress(p))
    if not runs:
        print(f"[train] resume=true: no earlier run with a checkpoint or episodes under {parent}; "
              "starting a new run", file=sys.stderr, flush=True)
        return insert_override(rest, "resume=true")
    print(f"[train] resume=true: continuing {runs[-1]}", file=sys.stderr, flush=True)
    return insert_override(insert_override(rest, "resume=true"), f"hydra.run.dir={runs[-1]}")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mbrl.checkpoint import CheckpointError
    from mbrl.envs import MissingSimulatorError, UnknownTaskError
    from mbrl.utils import ConfigValueError
    from worldmodel.episodes import EpisodeFormatError
    from worldmodel.interface import WorldModelConfigError

    run_dir = HydraConfig.get().runtime.output_dir
    with user_errors("train", (MissingSimulatorError, UnknownTaskError, CheckpointError, EpisodeFormatError,
                               WorldModelConfigError, ConfigValueError, FileNotFoundError)):
        from mbrl.trainer import Trainer

        print(f"[train] run dir: {run_dir}", flush=True)
        result = Trainer(cfg, run_dir).train()
    if result:  # DMC has no success notion (suite config): its runs report the return only
        success = "" if cfg.task.suite == "dmc" else f"success {result['success']:.2f}, "
        print(f"[train] done: final eval {success}return {result['episode_reward']:.1f}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    sys.argv = [sys.argv[0]] + resolve_resume(choose_preset(sys.argv[1:]))
    main()
