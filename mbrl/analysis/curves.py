"""Eval curves of many runs: loading run dirs, aligning seeds, bootstrap confidence intervals,
IQM and performance profiles (the estimators of Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice", as in the `rliable` package).

Why not `rliable` itself: rliable 1.2.0 pulls arch, statsmodels, pandas and seaborn, and its `arch`
dependency fails at import with pandas 3 (the version pip picks next to numpy 2.4). The estimators
are a few lines of numpy, written here to match rliable's definitions:

- IQM: the mean of the middle 50% of all (run, task) scores, cutting ``int(0.25 * n)`` scores at
  each end (scipy.stats.trim_mean(x, 0.25) on the flattened scores).
- Stratified bootstrap: runs are resampled with replacement *within each task*; the statistic is
  recomputed on each resample; the interval is the percentile interval.
- Performance profile: for each threshold tau, the fraction of runs with score > tau, averaged over
  tasks (each task weighs the same).

A run dir is what ``mbrl/train_mbpo.py`` writes: ``eval.csv`` (columns frame, episode_reward,
success, ...) and ``.hydra/config.yaml`` (task.suite, task.name, world_model.name, seed, ...).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

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


class RunDirError(ValueError):
    """A run dir that cannot be read as an eval curve (missing/corrupt eval.csv or config)."""


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


def _read_eval_csv(path: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e})") from None
    if rows and ("frame" not in rows[0] or metric not in rows[0]):
        raise RunDirError(f"{path}: needs columns 'frame' and {metric!r}; has {sorted(rows[0])}")
    try:
        frame = np.array([int(float(r["frame"])) for r in rows], dtype=np.int64)
        score = np.array([float(r[metric]) for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path}: a row is not numeric ({e}); was the file cut off?") from None
    order = np.argsort(frame, kind="stable")
    return frame[order], score[order]


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
    except Exception as e:  # noqa: BLE001 - any malformed config is reported the same way
        raise RunDirError(f"{config_path}: missing or malformed key ({e})") from None
    frame, score = _read_eval_csv(path / EVAL_CSV, metric_for_suite(suite))
    return RunCurve(path, suite, task, method, seed, frame, score, target)


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


def group_runs(runs: Iterable[RunCurve]) -> dict[tuple[str, str], list[RunCurve]]:
    """(task, method) -> runs sorted by seed. Two runs of one seed in one group is an error."""
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for run in runs:
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
def align(runs: Sequence[RunCurve]) -> tuple[np.ndarray, np.ndarray]:
    """The eval frames every run has, and the scores there: frames [F], scores [S, F].

    Runs of one group evaluate at the same frames (eval_every_frames); an unfinished run only
    shortens the common range."""
    if not runs:
        raise ValueError("align() needs at least one run")
    common = runs[0].frame
    for run in runs[1:]:
        common = np.intersect1d(common, run.frame)
    scores = np.stack([run.score[np.searchsorted(run.frame, common)] for run in runs])  # [S, F]
    return common, scores


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


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # pooled scores [..., N] -> [...]
    "IQM": iqm,
    "Mean": lambda x: np.mean(x, axis=-1),
    "Median": lambda x: np.median(x, axis=-1),
    "Optimality gap": optimality_gap,
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


def stratified_bootstrap(per_task: Sequence[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray],
                         reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
                         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic of the scores pooled over tasks, with a stratified-bootstrap interval.

    per_task: one array [S_t, ...] per task (seed counts may differ). ``statistic`` maps pooled
    scores [..., N] (N = sum of S_t, pooled along the last axis) to [...].
    Returns point, low, high, each [...] (the trailing dims of the inputs, e.g. frames)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    per_task = [np.asarray(x, dtype=np.float64) for x in per_task]
    pooled = np.moveaxis(np.concatenate(per_task, axis=0), 0, -1)  # [..., N]
    resampled = [x[rng.integers(0, x.shape[0], size=(reps, x.shape[0]))] for x in per_task]  # [reps, S_t, ...]
    boot = np.moveaxis(np.concatenate(resampled, axis=1), 1, -1)  # [reps, ..., N]
    low, high = percentile_interval(statistic(boot), confidence)
    return statistic(pooled), low, high


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
    frame: np.ndarray  # [F] eval frames common to all seeds
    scores: np.ndarray  # [S, F]
    mean: np.ndarray  # [F]
    low: np.ndarray  # [F]
    high: np.ndarray  # [F]
    final: tuple[float, float, float]  # mean, low, high of the last common eval
    auc: tuple[float, float, float]  # mean, low, high of normalized_auc

    @property
    def normalized_final(self) -> np.ndarray:
        """Each seed's final score in [0, 1] (success, or return / 1000 for DMC): [S]."""
        return self.scores[:, -1] / normalizer(self.suite)


def summarize(groups: dict[tuple[str, str], list[RunCurve]], reps: int = BOOTSTRAP_REPS,
              confidence: float = CONFIDENCE, seed: int = 0) -> list[GroupSummary]:
    """Per (task, method): mean curve over seeds with bootstrap bands, final score and AUC."""
    rng = np.random.default_rng(seed)
    out = []
    for (task, method), runs in groups.items():
        frame, scores = align(runs)
        mean, low, high = bootstrap_mean(scores, reps, confidence, rng)
        auc = bootstrap_mean(normalized_auc(frame, scores)[:, None], reps, confidence, rng)
        out.append(GroupSummary(
            task=task, suite=runs[0].suite, method=method, seeds=[r.seed for r in runs],
            unfinished=[r.seed for r in runs if not r.finished], frame=frame, scores=scores,
            mean=mean, low=low, high=high,
            final=(float(mean[-1]), float(low[-1]), float(high[-1])),
            auc=tuple(float(v[0]) for v in auc)))
    return out


@dataclass
class MethodAggregate:
    """Cross-task aggregates of one method's normalized final scores, with stratified CIs."""

    method: str
    tasks: list[str]
    runs: int
    metrics: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> point, low, high


def aggregate_methods(summaries: Sequence[GroupSummary], reps: int = BOOTSTRAP_REPS,
                      confidence: float = CONFIDENCE, seed: int = 0) -> list[MethodAggregate]:
    """IQM, mean, median and optimality gap over all tasks of each method (final scores in [0, 1])."""
    rng = np.random.default_rng(seed)
    out = []
    for method in sorted({s.method for s in summaries}):
        mine = [s for s in summaries if s.method == method]
        per_task = [s.normalized_final for s in mine]
        agg = MethodAggregate(method, [s.task for s in mine], sum(len(x) for x in per_task))
        for name, fn in AGGREGATES.items():
            point, low, high = stratified_bootstrap(per_task, fn, reps, confidence, rng)
            agg.metrics[name] = (float(point), float(low), float(high))
        out.append(agg)
    return out


def aggregate_curve(summaries: Sequence[GroupSummary],
                    statistic: Callable[[np.ndarray], np.ndarray] = AGGREGATES["Mean"],
                    reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE, seed: int = 0,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One method's normalized score over frames, pooled over its tasks (frames all tasks share):
    returns frame [F], point, low, high [F]. iVideoGPT's "aggregated success" is the Mean."""
    frame = summaries[0].frame
    for s in summaries[1:]:
        frame = np.intersect1d(frame, s.frame)
    per_task = [s.scores[:, np.searchsorted(s.frame, frame)] / normalizer(s.suite) for s in summaries]  # [S_t, F]
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
        lines += ["", f"Aggregates of the normalized final score over tasks ({pct} stratified-bootstrap CIs; "
                      "success rate, or DMC return / 1000):", "",
                  "| method | tasks | runs | " + " | ".join(names) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for a in aggregates:
            lines.append(f"| {a.method} | {len(a.tasks)} | {a.runs} | "
                         + " | ".join(_ci(a.metrics[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"
