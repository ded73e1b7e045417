"""Eval curves of many runs: loading run dirs, aligning seeds, bootstrap confidence intervals,
IQM and performance profiles (the estimators of Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice", as in the `rliable` package).

Why not `rliable` itself: rliable 1.2.0 pulls arch, statsmodels, pandas and seaborn, and its `arch`
dependency fails at import with pandas 3 (the version pip picks next to numpy 2.4). The estimators
are a few lines of numpy, written here to match rliable's definitions:

- Mean / Median: of the per-task means over seeds (each task weighs the same, however many seeds
  it has), as rliable's aggregate_mean / aggregate_median.
- Optimality gap: 1 - mean over tasks of each task's mean of min(score, 1) (rliable pools all runs,
  which is the same when every task has the same number of seeds).
- IQM: the mean of the middle 50% of all (run, task) scores, cutting ``int(0.25 * n)`` scores at
  each end (scipy.stats.trim_mean(x, 0.25) on the flattened scores; a statistic of runs, so a task
  with more seeds has more runs in it, as in rliable).
- Stratified bootstrap: runs are resampled with replacement *within each task*; the statistic is
  recomputed on each resample; the interval is the percentile interval.
- Performance profile: for each threshold tau, the fraction of runs with score > tau, averaged over
  tasks (each task weighs the same).

Which runs share a curve: runs of one task and one method (world model, demos, pretrained world
model) whose saved configs agree on every setting that can change learning, i.e. all keys but
``SCHEDULE_ONLY_KEYS`` (seed, ``num_train_frames``, eval/save cadence, logging, device), and that
used the same preset (``.hydra/hydra.yaml``). Runs that differ get separate curves, labelled with
the preset and the differing keys (a warning says so). ``num_train_frames`` only sets where a run
stops (nothing in the trainer reads it otherwise), so a run extended to more frames still pools
with the others: the group's curve ends where its shortest seed ends, and a warning names the seeds
cut. Seeds evaluated at different frames are aligned on the merged eval frames inside the range all
seeds cover, each seed contributing its latest eval at or before each frame; a seed whose first eval
comes late (e.g. one run with ``eval_every_frames=0``) makes the curve and its AUC start there, and a
warning names it.

Cross-method aggregates (IQM, Mean, Median, optimality gap, the aggregate curve and the performance
profile) use only the tasks every compared method has: a method run on easier tasks only would
otherwise rank above one run on all of them. A warning names the (task, method) curves left out.

A run dir is what ``mbrl/train_mbpo.py`` writes: ``eval.csv`` (columns frame, episode_reward,
success, ...) and ``.hydra/config.yaml`` (task.suite, task.name, world_model.name, seed, ...).
"""
from __future__ import annotations

import csv
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mbrl.logger import is_complete

CONFIDENCE = 0.95  # width of every interval
BOOTSTRAP_REPS = 2000  # resamples per interval (rliable's default is 50k; 2k gives ~0.5% MC error)
IQM_TRIM = 0.25  # fraction cut at each end for the interquartile mean
DMC_MAX_RETURN = 1000.0  # DM Control returns are in [0, 1000]: normalizer for cross-task aggregates
SUCCESS_SUITES = ("metaworld", "maniskill", "libero")  # curves plot the eval success rate
RETURN_SUITES = ("dmc",)  # curves plot the eval return
METHOD_NAMES = {  # world_model.name -> label in plots and tables
    "none": "DrQ-v2 (ours)",
    "ivideogpt": "MBPO + iVideoGPT (ours)",
    "vid2world": "MBPO + Vid2World (ours)",
}
EVAL_CSV = "eval.csv"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_RUNTIME = Path(".hydra") / "hydra.yaml"  # holds the preset that was picked (runtime.choices)
# Config keys (or whole sections) that do not change what a run learns, or that the group key holds
# already: runs that differ only in these share a curve. Every other key must match.
SCHEDULE_ONLY_KEYS = ("seed", "num_train_frames", "eval_every_frames", "save_every_frames", "resume",
                      "device", "cpu_threads", "keep_freed_memory", "log", "replay.memmap", "task.name",
                      "task.task_index",
                      # validation draws from its own random stream (mbrl/mbpo.py MBPO.validate)
                      "mbpo.validate_every_episodes", "mbpo.validate_batch",
                      # trades memory for time: the same loss and gradients
                      "world_model.model.gradient_checkpointing")


class RunDirError(ValueError):
    """A run dir that cannot be read as an eval curve (missing/corrupt eval.csv or config)."""


class CurveWarning(UserWarning):
    """Something about the curves the user should know (dropped rows, cut seeds, split groups)."""


# ----------------------------------------------------------------------------- loading runs
@dataclass
class RunCurve:
    """One run's eval curve. ``score`` is the suite's metric (success or return), per eval."""

    path: Path
    suite: str
    task: str  # "<suite>/<task>", e.g. "metaworld/plate_slide", "dmc/walker_walk"
    method: str  # label, e.g. "DrQ-v2 (ours)"
    seed: int
    frame: np.ndarray  # [N] int, env frames
    score: np.ndarray  # [N] float
    target_frames: int  # num_train_frames of the run's config
    preset: str | None = None  # cfgs/preset the run used (None: not recorded)
    settings: dict[str, str] = field(default_factory=dict)  # config keys that can change learning -> value

    @property
    def finished(self) -> bool:
        return len(self.frame) > 0 and int(self.frame[-1]) >= self.target_frames


def metric_for_suite(suite: str) -> str:
    """``success`` (rate over eval episodes) for manipulation suites, ``episode_reward`` for DMC."""
    if suite in RETURN_SUITES:
        return "episode_reward"
    if suite in SUCCESS_SUITES:
        return "success"
    raise RunDirError(f"unknown suite {suite!r}: expected one of {SUCCESS_SUITES + RETURN_SUITES}")


def normalizer(suite: str) -> float:
    """Divide a score by this to put it in [0, 1] for aggregates across tasks."""
    return DMC_MAX_RETURN if suite in RETURN_SUITES else 1.0


def task_key(suite: str, name: str, task_index: int | None = None) -> str:
    """``metaworld`` + ``plate-slide-v3`` -> ``metaworld/plate_slide`` (the cfgs/task file name);
    ManiSkill ``PickCube-v1`` -> ``maniskill/pick_cube``; a LIBERO suite's task -> ``.../task_<i>``."""
    short = re.sub(r"-v\d+$", "", str(name))
    if suite == "maniskill":
        short = re.sub(r"(?<!^)(?=[A-Z])", "_", short).lower()
    key = f"{suite}/{short.replace('-', '_')}"
    return key if task_index is None else f"{key}/task_{int(task_index)}"


def method_label(world_model: str, demo: bool = False, pretrained: str | None = None) -> str:
    """The method's name in plots: the world model's label, marked when demos or a pretrained
    world model were used (so that such variants never share a curve with plain runs)."""
    label = METHOD_NAMES.get(world_model, f"MBPO + {world_model} (ours)")
    extras = [x for x, on in (("demos", demo), ("pretrained WM", bool(pretrained))) if on]
    return f"{label} + {' + '.join(extras)}" if extras else label


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every directory at or below ``paths`` that holds an ``eval.csv``, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run directory or sweep directory")
        if (p / EVAL_CSV).is_file():
            found.add(p)
        found.update(q.parent for q in p.rglob(EVAL_CSV) if ".hydra" not in q.parts)
    return sorted(found)


def _parse_row(row: Mapping[str, str | None], metric: str) -> tuple[int, float]:
    """(frame, score) of one eval.csv row; ValueError if either is missing or not a number."""
    try:
        return int(float(row["frame"])), float(row[metric])
    except (TypeError, ValueError) as e:
        raise ValueError(f"frame {row.get('frame')!r}, {metric} {row.get(metric)!r} ({e})") from None


def _read_eval_csv(path: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames and scores of an eval.csv, sorted by frame. A last row that was cut off (the run was
    writing it, or was killed while doing so) is dropped with a CurveWarning; any other bad row is a
    RunDirError."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e})") from None
    if rows and ("frame" not in rows[0] or metric not in rows[0]):
        raise RunDirError(f"{path}: needs columns 'frame' and {metric!r}; has {sorted(map(str, rows[0]))}")
    parsed = []
    for i, row in enumerate(rows):
        last = i == len(rows) - 1
        try:
            if last and not is_complete(row, ("frame", metric)):  # the rule resume applies to its CSVs
                raise ValueError("cut off or garbled")
            parsed.append(_parse_row(row, metric))
        except ValueError as e:
            if not last:
                raise RunDirError(f"{path}: row {i + 1} is not numeric: {e}") from None
            warnings.warn(f"{path}: ignoring its last row, which is incomplete ({e}); the run is probably "
                          "still writing it, or was killed while doing so", CurveWarning, stacklevel=2)
    frame = np.array([f for f, _ in parsed], dtype=np.int64)
    score = np.array([v for _, v in parsed], dtype=np.float64)
    order = np.argsort(frame, kind="stable")
    return frame[order], score[order]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"agent": {"lr": 1e-4}} -> {"agent.lr": "0.0001"} (values as text, for comparing configs)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _changes_learning(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in SCHEDULE_ONLY_KEYS)


def learning_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """The keys of a run's config (nested dict) that can change its curve -> their values as text."""
    return {k: v for k, v in _flatten(config).items() if _changes_learning(k)}


def _read_preset(path: Path) -> str | None:
    """The preset choice saved by Hydra in ``.hydra/hydra.yaml`` (None when absent)."""
    from omegaconf import OmegaConf

    runtime = path / HYDRA_RUNTIME
    if not runtime.is_file():
        return None
    try:
        preset = OmegaConf.select(OmegaConf.load(runtime), "hydra.runtime.choices.preset")
    except Exception as e:  # noqa: BLE001 - a malformed file is reported the same way
        raise RunDirError(f"{runtime}: cannot read ({e})") from None
    return None if preset is None else str(preset)


def load_run(path: str | Path) -> RunCurve:
    """Read one run dir; raises RunDirError naming the file and the problem."""
    from omegaconf import OmegaConf

    path = Path(path)
    config_path = path / HYDRA_CONFIG
    if not config_path.is_file():
        raise RunDirError(f"{path}: no {HYDRA_CONFIG} (not a run dir of mbrl/train_mbpo.py?)")
    try:
        cfg = OmegaConf.load(config_path)
        suite, name = str(cfg.task.suite), str(cfg.task.name)
        task = task_key(suite, name, cfg.task.get("task_index"))
        wm = cfg.world_model
        method = method_label(str(wm.name), bool(cfg.get("demo", False)), wm.get("pretrained"))
        seed, target = int(cfg.seed), int(cfg.num_train_frames)
        settings = learning_settings(OmegaConf.to_container(cfg, resolve=False))
    except Exception as e:  # noqa: BLE001 - any malformed config is reported the same way
        raise RunDirError(f"{config_path}: missing or malformed key ({e})") from None
    frame, score = _read_eval_csv(path / EVAL_CSV, metric_for_suite(suite))
    return RunCurve(path, suite, task, method, seed, frame, score, target, _read_preset(path), settings)


def load_runs(paths: Iterable[str | Path]) -> tuple[list[RunCurve], list[str]]:
    """All readable runs below ``paths`` and one message per run dir that was skipped."""
    runs, problems = [], []
    for run_dir in find_run_dirs(paths):
        try:
            run = load_run(run_dir)
        except RunDirError as e:
            problems.append(str(e))
            continue
        if len(run.frame) == 0:
            problems.append(f"{run_dir}: eval.csv has no rows yet")
            continue
        runs.append(run)
    return runs, problems


def _differing_keys(runs: Sequence[RunCurve]) -> set[str]:
    """Settings whose value is not the same in all ``runs`` (a key missing in some counts too)."""
    keys = set().union(*(run.settings for run in runs))
    return {k for k in keys if len({run.settings.get(k) for run in runs}) > 1}


def variant_labels(runs: Sequence[RunCurve]) -> dict[str, tuple[bool, list[str]]]:
    """Per method label: whether its runs of one task used several presets, and the settings that
    differ between its runs of one task and one preset. Both empty: all its runs are comparable."""
    by_task: dict[tuple[str, str], list[RunCurve]] = defaultdict(list)
    by_preset: dict[tuple[str, str, str | None], list[RunCurve]] = defaultdict(list)
    for run in runs:
        by_task[run.task, run.method].append(run)
        by_preset[run.task, run.method, run.preset].append(run)
    presets = {method for (_, method), group in by_task.items() if len({r.preset for r in group}) > 1}
    keys: dict[str, set[str]] = defaultdict(set)
    for (_, method, _), group in by_preset.items():
        keys[method] |= _differing_keys(group)
    return {method: (method in presets, sorted(keys[method])) for method in {r.method for r in runs}
            if method in presets or keys[method]}


def _label_variant(run: RunCurve, by_preset: bool, keys: list[str]) -> RunCurve:
    parts = ([f"preset={run.preset or '?'}"] if by_preset else []) + [f"{k}={run.settings.get(k, '-')}" for k in keys]
    return replace(run, method=f"{run.method} [{', '.join(parts)}]")


def split_incomparable(runs: Sequence[RunCurve]) -> list[RunCurve]:
    """Runs whose settings differ from others of their task and method get the differing preset and
    keys appended to their method label (so they are never pooled), with a CurveWarning per method."""
    variants = variant_labels(runs)
    for method, (by_preset, keys) in sorted(variants.items()):
        what = ", ".join((["the preset"] if by_preset else []) + keys)
        warnings.warn(f"{method}: runs of one task differ in {what}; they are plotted as separate curves "
                      "(seeds are pooled only when everything but seed, frame budget, eval/save cadence and "
                      "logging matches)", CurveWarning, stacklevel=2)
    return [_label_variant(r, *variants[r.method]) if r.method in variants else r for r in runs]


def group_runs(runs: Iterable[RunCurve]) -> dict[tuple[str, str], list[RunCurve]]:
    """(task, method) -> runs sorted by seed; runs with different learning settings are split first
    (``split_incomparable``). Two runs of one seed in one group is an error."""
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for run in split_incomparable(list(runs)):
        groups.setdefault((run.task, run.method), []).append(run)
    for (task, method), members in groups.items():
        members.sort(key=lambda r: r.seed)
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            paths = [str(r.path) for r in members if r.seed in dup]
            raise RunDirError(f"{task} / {method}: seed(s) {dup} appear in several run dirs {paths}; "
                              "pass only one sweep per method, or remove the duplicates")
    return dict(sorted(groups.items()))


# ----------------------------------------------------------------------------- curves
def common_grid(frames: Sequence[np.ndarray]) -> np.ndarray:
    """All eval frames of all curves, merged, within the range every curve covers (from the latest
    first eval to the earliest last eval): [F]. Curves on one grid get that grid back."""
    start, end = max(int(f[0]) for f in frames), min(int(f[-1]) for f in frames)
    if start > end:
        raise ValueError(f"the curves share no frame range: one starts at frame {start}, another ends at {end}")
    merged = np.unique(np.concatenate(frames))
    return merged[(merged >= start) & (merged <= end)]


def latest_at(frame: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The latest value at or before each grid frame: frame [N] (sorted), values [..., N] -> [..., G].
    Every grid frame must be >= frame[0]."""
    return values[..., np.searchsorted(frame, grid, side="right") - 1]


def align(runs: Sequence[RunCurve]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds on one frame grid: frames [F] (``common_grid``), scores [S, F] (each seed's latest eval
    at or before each frame). Seeds that evaluate at the same frames keep exactly those; an
    unfinished (or shorter) seed shortens the common range."""
    if not runs:
        raise ValueError("align() needs at least one run")
    try:
        grid = common_grid([run.frame for run in runs])
    except ValueError as e:
        raise RunDirError(f"{runs[0].task} / {runs[0].method}: {e} (seeds {[r.seed for r in runs]})") from None
    return grid, np.stack([latest_at(run.frame, run.score, grid) for run in runs])  # [S, F]


def normalized_auc(frame: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Area under the curve divided by its frame span: the curve's mean height over training, in
    the score's own units (so 1.0 = success from the first frame on). value [..., F] -> [...]."""
    frame = np.asarray(frame, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    if frame.size < 2:
        return value[..., 0] if frame.size else np.full(value.shape[:-1], np.nan)
    area = np.sum((value[..., 1:] + value[..., :-1]) * np.diff(frame) / 2, axis=-1)
    return area / (frame[-1] - frame[0])


# ----------------------------------------------------------------------------- estimators
def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: sort, drop ``int(0.25 n)`` values at each end, average."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    cut = int(IQM_TRIM * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def optimality_gap(x: np.ndarray, axis: int = -1, target: float = 1.0) -> np.ndarray:
    """How far scores fall short of ``target`` on average (scores above it count as ``target``)."""
    return target - np.minimum(np.asarray(x, dtype=np.float64), target).mean(axis=axis)


# A statistic across tasks: one array of scores per task, seeds on the last axis ([..., S_t]) -> [...].
TaskStatistic = Callable[[Sequence[np.ndarray]], np.ndarray]


def task_means(per_task: Sequence[np.ndarray]) -> np.ndarray:
    """Each task's mean over its seeds: per task [..., S_t] -> [..., T]."""
    return np.stack([np.mean(x, axis=-1) for x in per_task], axis=-1)


def mean_over_tasks(per_task: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the per-task means: every task weighs the same, whatever its number of seeds."""
    return task_means(per_task).mean(axis=-1)


def median_over_tasks(per_task: Sequence[np.ndarray]) -> np.ndarray:
    return np.median(task_means(per_task), axis=-1)


def iqm_over_runs(per_task: Sequence[np.ndarray]) -> np.ndarray:
    return iqm(np.concatenate(per_task, axis=-1))


def optimality_gap_over_tasks(per_task: Sequence[np.ndarray], target: float = 1.0) -> np.ndarray:
    return target - mean_over_tasks([np.minimum(x, target) for x in per_task])


AGGREGATES: dict[str, TaskStatistic] = {
    "IQM": iqm_over_runs,
    "Mean": mean_over_tasks,
    "Median": median_over_tasks,
    "Optimality gap": optimality_gap_over_tasks,
}


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The central ``confidence`` interval of bootstrap samples [reps, ...] -> (low, high) [...]."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def bootstrap_mean(scores: np.ndarray, reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds with a percentile-bootstrap interval: scores [S, ...] -> mean, low, high [...].

    Seeds are resampled with replacement; with one seed the interval is the point itself."""
    rng = rng if rng is not None else np.random.default_rng(0)
    scores = np.asarray(scores, dtype=np.float64)
    idx = rng.integers(0, scores.shape[0], size=(reps, scores.shape[0]))  # [reps, S]
    low, high = percentile_interval(scores[idx].mean(axis=1), confidence)
    return scores.mean(axis=0), low, high


def stratified_bootstrap(per_task: Sequence[np.ndarray], statistic: TaskStatistic,
                         reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
                         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic across tasks (one of ``AGGREGATES``), with a stratified-bootstrap interval.

    per_task: one array [S_t, ...] per task (seed counts may differ). ``statistic`` gets the tasks'
    scores with seeds moved to the last axis ([..., S_t] each) and returns [...].
    Returns point, low, high, each [...] (the trailing dims of the inputs, e.g. frames)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    per_task = [np.asarray(x, dtype=np.float64) for x in per_task]
    resampled = [np.moveaxis(x[rng.integers(0, x.shape[0], size=(reps, x.shape[0]))], 1, -1)
                 for x in per_task]  # [reps, ..., S_t] each
    low, high = percentile_interval(statistic(resampled), confidence)
    return statistic([np.moveaxis(x, 0, -1) for x in per_task]), low, high


def performance_profile(per_task: Sequence[np.ndarray], taus: np.ndarray, reps: int = BOOTSTRAP_REPS,
                        confidence: float = CONFIDENCE, rng: np.random.Generator | None = None,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs scoring above each tau, averaged over tasks, with a stratified-bootstrap
    interval. per_task: one array [S_t] of (normalized) final scores per task; taus [K].
    Returns profile, low, high, each [K]."""
    rng = rng if rng is not None else np.random.default_rng(0)
    taus = np.asarray(taus, dtype=np.float64)

    def profile(task_scores: Sequence[np.ndarray]) -> np.ndarray:  # each [..., S_t] -> [..., K]
        return np.mean([(s[..., :, None] > taus).mean(axis=-2) for s in task_scores], axis=0)

    per_task = [np.asarray(x, dtype=np.float64) for x in per_task]
    boot = profile([x[rng.integers(0, len(x), size=(reps, len(x)))] for x in per_task])  # [reps, K]
    low, high = percentile_interval(boot, confidence)
    return profile(per_task), low, high


# ----------------------------------------------------------------------------- summaries
@dataclass
class GroupSummary:
    """One (task, method): the seed-mean curve with its band, and the final / AUC figures."""

    task: str
    suite: str
    method: str
    seeds: list[int]
    unfinished: list[int]  # seeds whose run has not reached num_train_frames
    frame: np.ndarray  # [F] eval frames of the range all seeds cover (``align``)
    scores: np.ndarray  # [S, F]
    mean: np.ndarray  # [F]
    low: np.ndarray  # [F]
    high: np.ndarray  # [F]
    final: tuple[float, float, float]  # mean, low, high of the last common eval
    auc: tuple[float, float, float]  # mean, low, high of normalized_auc
    cut: dict[int, int] = field(default_factory=dict)  # seed -> its last eval frame, for seeds beyond frame[-1]
    late: dict[int, int] = field(default_factory=dict)  # seed -> its first eval frame, for seeds starting late

    def normalized_at(self, frame: int) -> np.ndarray:
        """Each seed's score at ``frame`` (its latest eval at or before it) in [0, 1]: success, or
        return / 1000 for DMC: [S]."""
        if not self.frame[0] <= frame <= self.frame[-1]:
            raise ValueError(f"{self.task} / {self.method} has evals from frame {int(self.frame[0])} to "
                             f"{int(self.frame[-1])}, not at frame {frame}")
        return latest_at(self.frame, self.scores, np.array([frame]))[:, 0] / normalizer(self.suite)


def common_final_frames(summaries: Sequence[GroupSummary]) -> dict[str, int]:
    """Per task, the last frame all its methods' curves reached: where the cross-method aggregates
    read that task's final scores, so that no method is scored at a larger budget than another on
    the same task (tasks keep their own budgets). A warning names the curves that went further;
    ValueError if a curve starts after that frame (nothing of it could be read there)."""
    frames: dict[str, int] = {}
    for s in summaries:
        frames[s.task] = min(frames.get(s.task, int(s.frame[-1])), int(s.frame[-1]))
    apart = sorted(f"{s.task} / {s.method} (first eval at frame {int(s.frame[0])})"
                   for s in summaries if s.frame[0] > frames[s.task])
    if apart:
        raise ValueError(f"these curves start after the last frame all methods reached on their task, so the "
                         f"methods cannot be compared there: {', '.join(apart)}; run them with evals from the "
                         "start (eval_every_frames > 0), or leave them out of the paths")
    ahead = sorted(f"{s.task} / {s.method} (frame {int(s.frame[-1])} > {frames[s.task]})"
                   for s in summaries if s.frame[-1] > frames[s.task])
    if ahead:
        warnings.warn("the aggregates read each task's final scores at the last frame all its methods reached; "
                      f"these curves went further: {', '.join(ahead)}", CurveWarning, stacklevel=2)
    return frames


def summarize(groups: dict[tuple[str, str], list[RunCurve]], reps: int = BOOTSTRAP_REPS,
              confidence: float = CONFIDENCE, seed: int = 0) -> list[GroupSummary]:
    """Per (task, method): mean curve over seeds with bootstrap bands, final score and AUC."""
    rng = np.random.default_rng(seed)
    out = []
    for (task, method), runs in groups.items():
        frame, scores = align(runs)
        mean, low, high = bootstrap_mean(scores, reps, confidence, rng)
        auc = bootstrap_mean(normalized_auc(frame, scores)[:, None], reps, confidence, rng)
        cut = {r.seed: int(r.frame[-1]) for r in runs if r.frame[-1] > frame[-1]}
        if cut:
            warnings.warn(f"{task} / {method}: the curve ends at frame {int(frame[-1])}, the last frame all "
                          f"{len(runs)} seeds reached; seed(s) {sorted(cut)} went on to frame(s) "
                          f"{[cut[s] for s in sorted(cut)]}", CurveWarning, stacklevel=2)
        earliest = min(int(r.frame[0]) for r in runs)
        late = {r.seed: int(r.frame[0]) for r in runs if r.frame[0] > earliest}
        if late:
            warnings.warn(f"{task} / {method}: the curve and its AUC start at frame {int(frame[0])}, the first frame "
                          f"all {len(runs)} seeds evaluated at, not {earliest}: seed(s) {sorted(late)} were first "
                          f"evaluated at frame(s) {[late[s] for s in sorted(late)]} (e.g. run with "
                          "eval_every_frames=0); leave those run dirs out of the paths to plot the whole curve",
                          CurveWarning, stacklevel=2)
        out.append(GroupSummary(
            task=task, suite=runs[0].suite, method=method, seeds=[r.seed for r in runs],
            unfinished=[r.seed for r in runs if not r.finished], frame=frame, scores=scores,
            mean=mean, low=low, high=high,
            final=(float(mean[-1]), float(low[-1]), float(high[-1])),
            auc=tuple(float(v[0]) for v in auc), cut=cut, late=late))
    return out


@dataclass
class MethodAggregate:
    """Cross-task aggregates of one method's normalized final scores, with stratified CIs."""

    method: str
    tasks: list[str]
    runs: int
    frames: dict[str, int]  # task -> where its final scores are read (common_final_frames of the compared methods)
    metrics: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> point, low, high
    left_out: list[str] = field(default_factory=list)  # "task / method" curves outside the shared tasks (all methods)


def shared_tasks(summaries: Sequence[GroupSummary]) -> tuple[list[GroupSummary], list[str]]:
    """The curves of the tasks every method has, and the "task / method" curves left out (with a
    CurveWarning naming them). Cross-method aggregates over different task sets would rank a method
    run only on easy tasks above one run on all of them. No task shared: no curve is kept (there are
    no aggregates; a CurveWarning says so), the per-task curves stay."""
    methods = sorted({s.method for s in summaries})
    shared = set.intersection(*({s.task for s in summaries if s.method == m} for m in methods)) if methods else set()
    kept = [s for s in summaries if s.task in shared]
    left_out = sorted(f"{s.task} / {s.method}" for s in summaries if s.task not in shared)
    if not shared and summaries:
        warnings.warn(f"no task was run by every method ({', '.join(methods)}): there are no aggregates across "
                      "tasks (no aggregate.png), only the per-task curves; run the missing tasks to compare them",
                      CurveWarning, stacklevel=2)
    elif left_out:
        warnings.warn(f"the aggregates across tasks use only the {len(shared)} task(s) every method has "
                      f"({', '.join(sorted(shared))}); left out: {', '.join(left_out)}", CurveWarning, stacklevel=2)
    return kept, left_out


def aggregate_methods(summaries: Sequence[GroupSummary], reps: int = BOOTSTRAP_REPS,
                      confidence: float = CONFIDENCE, seed: int = 0) -> list[MethodAggregate]:
    """IQM, mean, median and optimality gap over the tasks every method has (``shared_tasks``) of each
    method (final scores in [0, 1], each task's read at ``common_final_frames``; ``AGGREGATES`` says
    which weigh tasks and which weigh runs)."""
    rng = np.random.default_rng(seed)
    summaries, left_out = shared_tasks(summaries)
    frames = common_final_frames(summaries)
    out = []
    for method in sorted({s.method for s in summaries}):
        mine = [s for s in summaries if s.method == method]
        per_task = [s.normalized_at(frames[s.task]) for s in mine]
        agg = MethodAggregate(method, [s.task for s in mine], sum(len(x) for x in per_task), frames,
                              left_out=left_out)
        for name, fn in AGGREGATES.items():
            point, low, high = stratified_bootstrap(per_task, fn, reps, confidence, rng)
            agg.metrics[name] = (float(point), float(low), float(high))
        out.append(agg)
    return out


def aggregate_curve(summaries: Sequence[GroupSummary], statistic: TaskStatistic = mean_over_tasks,
                    reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE, seed: int = 0,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One method's normalized score over frames across its tasks (by default the mean over tasks of
    each task's seed mean), on the tasks' ``common_grid``: returns frame [F], point, low, high [F].
    iVideoGPT's "aggregated success" is this Mean. It starts where the latest-starting task's curve
    starts and ends where the shortest ends (warnings name the tasks cut). ValueError if the tasks'
    curves share no frame range."""
    try:
        frame = common_grid([s.frame for s in summaries])
    except ValueError as e:
        raise ValueError(f"{summaries[0].method}: no curve over tasks: {e} "
                         f"({', '.join(f'{s.task} {int(s.frame[0])}-{int(s.frame[-1])}' for s in summaries)})"
                         ) from None
    cut = sorted(f"{s.task} (frame {int(s.frame[-1])})" for s in summaries if s.frame[-1] > frame[-1])
    if cut:
        warnings.warn(f"{summaries[0].method}: the curve over tasks ends at frame {int(frame[-1])}, the last frame "
                      f"all its tasks reached; cut: {', '.join(cut)}", CurveWarning, stacklevel=2)
    earliest = min(int(s.frame[0]) for s in summaries)
    late = sorted(f"{s.task} (frame {int(s.frame[0])})" for s in summaries if s.frame[0] > earliest)
    if late:
        warnings.warn(f"{summaries[0].method}: the curve over tasks starts at frame {int(frame[0])}, the first frame "
                      f"all its tasks' curves have; these start late: {', '.join(late)}", CurveWarning, stacklevel=2)
    per_task = [latest_at(s.frame, s.scores, frame) / normalizer(s.suite) for s in summaries]  # [S_t, F]
    point, low, high = stratified_bootstrap(per_task, statistic, reps, confidence, np.random.default_rng(seed))
    return frame, point, low, high


def _ci(v: tuple[float, float, float], digits: int = 2) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def markdown_table(summaries: Sequence[GroupSummary], aggregates: Sequence[MethodAggregate] = (),
                   confidence: float = CONFIDENCE) -> str:
    """Per task and method: seeds, frames, final score and AUC (mean [CI]); then the aggregates."""
    pct = f"{100 * confidence:.0f}%"
    lines = [f"| task | method | metric | seeds | frames | final, mean [{pct} CI] | AUC, mean [{pct} CI] |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        digits = 1 if s.suite in RETURN_SUITES else 2
        seeds = str(len(s.seeds)) + (f" ({len(s.unfinished)} unfinished)" if s.unfinished else "")
        lines.append(f"| {s.task} | {s.method} | {metric_for_suite(s.suite)} | {seeds} | {int(s.frame[-1])} | "
                     f"{_ci(s.final, digits)} | {_ci(s.auc, digits)} |")
    if aggregates:
        names = list(AGGREGATES)
        at = ", ".join(f"{task} {frame}" for task, frame in sorted(aggregates[0].frames.items()))
        left_out = (f" Left out, as not every method has the task: {', '.join(aggregates[0].left_out)}."
                    if aggregates[0].left_out else "")
        lines += ["", f"Aggregates over the {len(aggregates[0].frames)} task(s) every method has, of the normalized "
                      f"score at the last frame all methods reached on each task ({at}; {pct} stratified-bootstrap "
                      "CIs; "
                      "success rate, or DMC return / 1000; Mean, Median and Optimality gap weigh each task "
                      f"the same, IQM pools all runs).{left_out}", "",
                  "| method | tasks | runs | " + " | ".join(names) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for a in aggregates:
            lines.append(f"| {a.method} | {len(a.tasks)} | {a.runs} | "
                         + " | ".join(_ci(a.metrics[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"
