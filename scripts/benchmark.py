"""Run a grid of tasks x methods (world models; ``none`` = DrQ-v2) x seeds as one Hydra multirun of
mbrl/train_mbpo.py: local processes (hydra-joblib-launcher) or SLURM (hydra-submitit-launcher).

    python scripts/benchmark.py metaworld6                    # cfgs/benchmark/metaworld6.yaml
    python scripts/benchmark.py smoke jobs=2                  # the CPU smoke benchmark
    python scripts/benchmark.py metaworld6 seeds=[1,2,3,4,5] launcher=submitit_slurm slurm.partition=gpu
    python scripts/benchmark.py smoke -- agent.batch_size=64  # after --: overrides for every run
                                                              # (not the keys the grid sets: RESERVED_KEYS)
    python scripts/benchmark.py smoke dry_run=true            # print the status and the command only

Every run lives in a fixed place, ``<root>/<name>/<suite>/<task>/<method>/seed<seed>``, and is
launched with ``resume=true``: running the same command again skips finished runs (the trainer
prints "already finished"), continues unfinished ones from their checkpoint, and starts missing
ones. Raising ``num_train_frames`` or adding seeds extends a benchmark in place. When every run is
finished nothing is launched. Then: ``python scripts/plot_curves.py <root>/<name>``.
"""
from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

from mbrl.logger import is_complete  # noqa: E402
from mbrl.run_lock import run_dir_in_use  # noqa: E402
GRID_DIR = REPO_ROOT / "cfgs" / "benchmark"
TRAIN_SCRIPT = REPO_ROOT / "mbrl" / "train_mbpo.py"
LAUNCHERS = ("basic", "joblib", "submitit_slurm", "submitit_local")
# One run's dir inside the sweep dir; the status check below builds the same path.
SWEEP_SUBDIR = "${hydra:runtime.choices.task}/${world_model.name}/seed${seed}"
SUBMITIT_LOCAL_KEYS = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb")  # the rest are SLURM-only
DRY_RUN_KEY = "dry_run"  # a command-line key of this script, not of the grid
BOOLEANS = {"true": True, "false": False}  # the only accepted spellings (any case), as in YAML/Hydra
# Training keys the sweep command sets itself (Hydra keeps an override's last value, so one given after
# `--` or in a grid's `overrides:` would silently replace them) -> what to change instead. A key ending
# in "." covers everything below it.
RESERVED_KEYS = {
    "task": "choose tasks with tasks=[...]",
    "world_model": "choose methods with methods=[...]",
    "world_model.name": "choose methods with methods=[...] (run dirs are named by it)",
    "seed": "choose seeds with seeds=[...]",
    "preset": "choose the preset with preset=<name>",
    "resume": "every run is launched with resume=true (finished runs are skipped); to start afresh use "
              "another name= or root=",
    "hydra.sweep.": "runs live in <root>/<name>/<task>/<method>/seed<seed>: set root= and name=",
    "hydra.run.": "runs live in <root>/<name>/<task>/<method>/seed<seed>: set root= and name=",
    "hydra/launcher": "choose the launcher with launcher=<name> (and jobs= or slurm.<key>=)",
}


class BenchmarkError(ValueError):
    """A grid that cannot run (unknown grid, task, method, key); the message says what to change."""


@dataclass
class Cell:
    """One run of the grid and where it stands."""

    task: str
    method: str
    seed: int
    run_dir: Path
    target_frames: int
    frames_done: int  # last eval frame in eval.csv (-1: no eval yet)

    @property
    def status(self) -> str:
        if self.frames_done >= self.target_frames:
            return "finished"
        if run_dir_in_use(self.run_dir):
            return f"training now ({max(self.frames_done, 0)} frames evaluated)"
        return "new" if self.frames_done < 0 else f"partial ({self.frames_done} frames)"


def parse_bool(key: str, text: str) -> bool:
    """``true`` / ``false`` (any case); anything else is a BenchmarkError rather than a guess."""
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise BenchmarkError(f"{key}={text}: expected {key}=true or {key}=false") from None


def pop_dry_run(grid_args: list[str]) -> tuple[bool, list[str]]:
    """Take ``dry_run=<bool>`` out of the grid's key=value arguments: (dry run?, the other arguments)."""
    dry_run, rest = False, []
    for arg in grid_args:
        key, sep, value = arg.partition("=")
        if key.strip() != DRY_RUN_KEY:
            rest.append(arg)
        elif not sep:
            raise BenchmarkError(f"{arg}: expected {DRY_RUN_KEY}=true or {DRY_RUN_KEY}=false")
        else:
            dry_run = parse_bool(DRY_RUN_KEY, value)
    return dry_run, rest


def load_grid(name: str, overrides: list[str]) -> DictConfig:
    """Compose cfgs/benchmark/<name>.yaml with key=value overrides (Hydra syntax)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not (GRID_DIR / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
        raise BenchmarkError(f"no grid {name!r} in {GRID_DIR}; known grids: {known}")
    try:
        with initialize_config_dir(config_dir=str(GRID_DIR), version_base=None):
            grid = compose(name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise BenchmarkError(f"grid {name}: {e}") from None
    if grid.launcher not in LAUNCHERS:
        raise BenchmarkError(f"launcher={grid.launcher}: expected one of {LAUNCHERS}")
    for key in ("tasks", "methods", "seeds"):
        if not grid[key]:
            raise BenchmarkError(f"grid {name}: {key} is empty")
        repeated = sorted({str(v) for v in grid[key] if list(grid[key]).count(v) > 1})
        if repeated:  # two jobs would write the same run dir
            raise BenchmarkError(f"grid {name}: {key} lists {', '.join(repeated)} more than once")
    for task in grid.tasks:
        if not (REPO_ROOT / "cfgs" / "task" / f"{task}.yaml").is_file():
            raise BenchmarkError(f"unknown task {task!r}: no cfgs/task/{task}.yaml")
    for method in grid.methods:
        if not (REPO_ROOT / "cfgs" / "world_model" / f"{method}.yaml").is_file():
            known = sorted(p.stem for p in (REPO_ROOT / "cfgs" / "world_model").glob("*.yaml"))
            raise BenchmarkError(f"unknown method {method!r}: expected a world model of {known}")
    return grid


def override_key(override: str) -> str:
    """The key a Hydra override sets: ``+agent.lr=1`` -> ``agent.lr``, ``~seed`` -> ``seed``,
    ``task@foo=x`` -> ``task``."""
    key = override.partition("=")[0].strip().lstrip("~+")
    return key.partition("@")[0]


def check_not_reserved(overrides: list[str], where: str) -> None:
    """BenchmarkError for an override of a key the benchmark sets itself (``RESERVED_KEYS``)."""
    for override in overrides:
        key = override_key(override)
        for reserved, instead in RESERVED_KEYS.items():
            if key == reserved.rstrip(".") or (reserved.endswith(".") and key.startswith(reserved)):
                raise BenchmarkError(f"{override} ({where}): the benchmark sets {key} itself; {instead}")


def run_overrides(grid: DictConfig, extra: list[str]) -> list[str]:
    """Overrides every run gets: the preset, the grid's own, then the command line's. Neither may set
    a key the sweep command sets (``RESERVED_KEYS``): Hydra would silently keep the last value."""
    check_not_reserved(list(map(str, grid.overrides)), f"in the grid's overrides: {list(grid.overrides)}")
    check_not_reserved(extra, "after --")
    return [f"preset={grid.preset}", *map(str, grid.overrides), *extra]


def cell_config(task: str, method: str, overrides: list[str]) -> DictConfig:
    """The training config a cell's runs compose (presets and overrides applied), as Hydra saves it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "cfgs"), version_base=None):
            cfg = compose("config", overrides=[f"task={task}", f"world_model={method}",
                                               *[o for o in overrides if not o.startswith("hydra")]])
    except (HydraException, OmegaConfBaseException) as e:
        raise BenchmarkError(f"task={task} world_model={method}: {e}") from None
    return cfg


def last_eval_frame(run_dir: Path) -> int:
    path = run_dir / "eval.csv"
    if not path.is_file():
        return -1
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    frames = []
    for i, row in enumerate(rows):
        if is_complete(row, ("frame",)):
            frames.append(int(float(row["frame"])))
        elif i < len(rows) - 1:  # a cut-off last row (a killed run) counts as not written; others are damage
            raise BenchmarkError(f"{path}: row {i + 1} is incomplete or has no numeric frame ({dict(row)}); "
                                 "repair or remove the file, or move the run dir away")
    return max(frames, default=-1)


def check_same_settings(run_dir: Path, cfg: DictConfig, seed: int, preset: str, overrides: list[str]) -> None:
    """Refuse to relaunch a run dir that was trained with other settings (mbrl/run_settings.py):
    before launching, rather than as one failed job of the sweep. ``overrides``: the user's, after ``--``."""
    from mbrl.run_settings import HYDRA_DIR, STARTED_WITH_DIR, describe_changes, launch_keys, run_settings
    from mbrl.run_settings import saved_settings, settings_changes
    from worldmodel.training.run_settings import command_line_keys

    saved = run_dir / HYDRA_DIR / STARTED_WITH_DIR
    if not (saved / "config.yaml").is_file():  # a new run, or one started before the copy was kept
        return
    config = OmegaConf.to_container(cfg, resolve=False)
    config["seed"] = seed
    try:
        groups = [d.name for d in (REPO_ROOT / "cfgs").iterdir() if d.is_dir()]  # group choices set no key
        changes = settings_changes(saved_settings(saved), run_settings(config, preset), launch_keys(saved),
                                   command_line_keys(overrides, groups))
    except Exception as e:  # noqa: BLE001 - an unreadable file is reported the same way
        raise BenchmarkError(f"{saved}: cannot read the run's settings ({e})") from None
    if changes:
        raise BenchmarkError(describe_changes(run_dir, changes))


def grid_cells(grid: DictConfig, sweep_dir: Path, overrides: list[str]) -> list[Cell]:
    cells = []
    for task in grid.tasks:
        for method in grid.methods:
            cfg = cell_config(task, method, overrides)
            for seed in grid.seeds:
                run_dir = sweep_dir / task / method / f"seed{seed}"
                check_same_settings(run_dir, cfg, int(seed), str(grid.preset), overrides)
                cells.append(Cell(task, method, int(seed), run_dir, int(cfg.num_train_frames),
                                  last_eval_frame(run_dir)))
    return cells


def launcher_overrides(grid: DictConfig) -> list[str]:
    if grid.launcher == "basic":
        return []
    if grid.launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={int(grid.jobs)}"]
    keys = [k for k in grid.slurm if grid.launcher == "submitit_slurm" or k in SUBMITIT_LOCAL_KEYS]
    return [f"hydra/launcher={grid.launcher}"] + [f"hydra.launcher.{k}={grid.slurm[k]}" for k in keys
                                                   if grid.slurm[k] is not None]


def sweep_command(grid: DictConfig, sweep_dir: Path, overrides: list[str]) -> list[str]:
    """The one `train_mbpo.py -m` command that runs the whole grid."""
    return [sys.executable, str(TRAIN_SCRIPT), "-m",
            f"task={','.join(grid.tasks)}", f"world_model={','.join(grid.methods)}",
            f"seed={','.join(str(s) for s in grid.seeds)}", "resume=true",
            f"hydra.sweep.dir={sweep_dir}", f"hydra.sweep.subdir={SWEEP_SUBDIR}",
            *launcher_overrides(grid), *overrides]


def thread_env(grid: DictConfig) -> dict[str, str]:
    """Parallel local runs share the CPU: give each an equal share of threads unless the user set it."""
    env = dict(os.environ)
    if grid.launcher == "joblib" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, int(grid.jobs))))
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        known = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
        print(f"usage: python scripts/benchmark.py <grid> [key=value ...] [-- train overrides]; grids: {known}",
              file=sys.stderr)
        return 2
    name = argv[0]
    try:
        dry_run, grid_args = pop_dry_run(argv[1:])
        grid = load_grid(name, grid_args)
        overrides = run_overrides(grid, extra)
        sweep_dir = (Path(grid.root) / grid.name).resolve()
        cells = grid_cells(grid, sweep_dir, overrides)
    except BenchmarkError as e:
        print(f"[benchmark] error: {e}", file=sys.stderr)
        return 1
    print(f"[benchmark] {grid.name}: {len(grid.tasks)} tasks x {len(grid.methods)} methods x "
          f"{len(grid.seeds)} seeds = {len(cells)} runs in {sweep_dir}")
    for cell in cells:
        print(f"  {cell.task:40s} {cell.method:10s} seed {cell.seed:<3d} {cell.status} "
              f"(target {cell.target_frames} frames)")
    todo = [c for c in cells if c.status != "finished"]
    cmd = sweep_command(grid, sweep_dir, overrides)
    if not todo:
        print(f"[benchmark] all {len(cells)} runs already finished; nothing to launch. "
              f"Plot them: python scripts/plot_curves.py {sweep_dir}")
        return 0
    print(f"[benchmark] {len(todo)} of {len(cells)} runs to do; finished runs are skipped by resume=true")
    print("[benchmark] " + shlex.join(cmd))
    if dry_run:
        return 0
    running = [c for c in todo if c.status.startswith("training now")]
    if running:  # their trainers hold the run dirs: a second sweep would stop at the first of them
        print(f"[benchmark] error: {len(running)} runs of this grid are training now (e.g. {running[0].run_dir}); "
              "wait for them to finish (dry_run=true shows where they stand), then run this again", file=sys.stderr)
        return 1
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(grid, sweep_dir / "benchmark.yaml")  # what was asked, next to the runs
    code = subprocess.call(cmd, env=thread_env(grid))
    if code == 0:
        print(f"[benchmark] done. Plot: python scripts/plot_curves.py {sweep_dir}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
