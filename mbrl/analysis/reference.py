"""Published reference curves and read-off figures, bundled as small CSVs (reference_data/).

They are a guide, not a like-for-like comparison: pixel vs state observations, other cameras,
action repeats, frame budgets and success definitions (reference_data/SOURCES.md says what each
one is, and how its step units were checked: every bundled frame axis is env steps, action repeat
included, like ours, so no source is rescaled).

    curves = reference_curves("metaworld/plate_slide")   # MWM / DreamerV2 pixels, TD-MPC2 / ... state
    points = read_off_points("metaworld/plate_slide")    # iVideoGPT paper plot, final values

The bundled files are built from the published raw data (per-seed curves) by

    python -m mbrl.analysis.reference <raw dir> [<out dir>]

which keeps, per (source, task, frame), the mean over seeds and its 95% bootstrap interval.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbrl.analysis.curves import BOOTSTRAP_REPS, bootstrap_mean

DATA_DIR = Path(__file__).resolve().parent / "reference_data"
CURVES_CSV = "reference_curves.csv"
READ_OFF_CSV = "ivideogpt_read_off.csv"
READ_OFF_AGGREGATE = "metaworld/aggregate"  # the read-off's "aggregated" value: the mean over its tasks
CURVE_COLUMNS = ("suite", "task", "method", "obs", "frame", "mean", "low", "high", "seeds")
GUIDE_NOTE = "references: a guide, not a like-for-like comparison"
# method key in the data -> plot label (observation type and camera in the label on purpose)
LABELS = {
    "drqv2": "DrQ-v2 (published, pixels 84px)",
    "mwm": "MWM (published, pixels corner2)",
    "dreamerv2": "DreamerV2 (MWM paper, pixels corner2)",
    # TD-MPC2 counts an eval episode as a success if info["success"] holds at its last step; ours
    # (and MWM's) if it holds at any step
    "tdmpc2": "TD-MPC2 (published, state, success at last step)",
    "dreamerv3": "DreamerV3 (TD-MPC2 paper, state)",
    "sac": "SAC (TD-MPC2 paper, state)",
    "ivideogpt_pretrained": "MBPO + iVideoGPT pretrained (paper, read off)",
    "ivideogpt_scratch": "MBPO + iVideoGPT from scratch (paper, read off)",
    "dreamerv3_ivideogpt": "DreamerV3 (iVideoGPT paper, read off)",
    "drqv2_ivideogpt": "DrQ-v2 (iVideoGPT paper, read off)",
}


@dataclass
class ReferenceCurve:
    """Mean over the published seeds, with its 95% bootstrap band."""

    method: str
    obs: str  # "pixels" | "state"
    frame: np.ndarray  # [F] env frames (action repeat included)
    mean: np.ndarray  # [F]
    low: np.ndarray  # [F]
    high: np.ndarray  # [F]
    seeds: int

    @property
    def label(self) -> str:
        return LABELS.get(self.method, self.method)


@dataclass
class ReadOffPoint:
    """A final value read off a published plot (no raw data): success in [0, 1]."""

    method: str
    value: float

    @property
    def label(self) -> str:
        return LABELS.get(self.method, self.method)


def _rows(name: str) -> list[dict[str, str]]:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled reference data missing (reinstall the package, or "
                                "rebuild it with `python -m mbrl.analysis.reference <raw dir>`)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_curves(task: str) -> list[ReferenceCurve]:
    """Curves for a task key such as ``metaworld/plate_slide`` or ``dmc/walker_walk`` (maybe none)."""
    suite, _, name = task.partition("/")
    found: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in _rows(CURVES_CSV):
        if row["suite"] == suite and row["task"] == name:
            found.setdefault((row["method"], row["obs"]), []).append(row)
    curves = []
    for (method, obs), rows in sorted(found.items()):
        rows.sort(key=lambda r: int(r["frame"]))
        col = {k: np.array([float(r[k]) for r in rows]) for k in ("frame", "mean", "low", "high")}
        curves.append(ReferenceCurve(method, obs, col["frame"].astype(np.int64), col["mean"], col["low"],
                                     col["high"], int(rows[0]["seeds"])))
    return curves


def read_off_points(task: str) -> list[ReadOffPoint]:
    """iVideoGPT-paper final values for a Meta-World task key, or ``metaworld/aggregate``."""
    suite, _, name = task.partition("/")
    return [ReadOffPoint(r["method"], float(r["success"])) for r in _rows(READ_OFF_CSV)
            if r["suite"] == suite and r["task"] == name]


def read_off_tasks(suite: str = "metaworld") -> set[str]:
    """The task keys the read-offs cover (the iVideoGPT six), without the aggregate."""
    return {f"{r['suite']}/{r['task']}" for r in _rows(READ_OFF_CSV)
            if r["suite"] == suite and f"{r['suite']}/{r['task']}" != READ_OFF_AGGREGATE}


def value_at(curve: ReferenceCurve, frame: int) -> float | None:
    """The reference's mean at the last published frame <= ``frame`` (None if it starts later)."""
    i = int(np.searchsorted(curve.frame, frame, side="right")) - 1
    return None if i < 0 else float(curve.mean[i])


# ----------------------------------------------------------------------------- building the data
def _summarize(per_seed: dict[int, dict[int, float]]) -> list[tuple[int, float, float, float, int]]:
    """{seed: {frame: value}} -> rows (frame, mean, low, high, seeds) at frames all seeds share."""
    frames = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    scores = np.array([[per_seed[s][f] for f in frames] for s in sorted(per_seed)])  # [S, F]
    mean, low, high = bootstrap_mean(scores, BOOTSTRAP_REPS)
    return [(f, m, lo, hi, len(per_seed)) for f, m, lo, hi in zip(frames, mean, low, high)]


def build_reference_data(raw: Path, out: Path = DATA_DIR) -> Path:
    """Rebuild reference_curves.csv from the raw published files (layout of SOURCES.md):
    drqv2_dmc/<task>.csv, metaworld/mwm_pixels_scores.json, metaworld/<method>_<task>_state.csv."""
    series: dict[tuple[str, str, str, str], dict[int, dict[int, float]]] = {}

    def add(suite: str, task: str, method: str, obs: str, seed: int, frame: int, value: float) -> None:
        series.setdefault((suite, task, method, obs), {}).setdefault(seed, {})[frame] = value

    for path in sorted((raw / "drqv2_dmc").glob("*.csv")):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                add("dmc", r["task"], "drqv2", "pixels", int(r["seed"]), int(float(r["frame"])),
                    float(r["episode_reward"]))
    # Every source below already counts env steps (action repeat included), as our frames do; the
    # evidence is in reference_data/SOURCES.md. No rescaling.
    with open(raw / "metaworld" / "mwm_pixels_scores.json") as f:
        for e in json.load(f):  # MWM's Logger multiplies its agent-step counter by action_repeat (2)
            task = e["task"].removeprefix("metaworld_")
            for step, value in zip(e["steps"], e["success_rates"]):
                add("metaworld", task, e["method"], "pixels", int(e["seed"]), int(step), float(value))
    # TD-MPC2's results/: its trainer counts agent steps (2 sim steps each), but the published CSVs
    # were multiplied by the action repeat before release (tdmpc2 issue #45): already env steps.
    for path in sorted((raw / "metaworld").glob("*_state.csv")):
        method, task = path.stem.removesuffix("_state").split("_", 1)
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                add("metaworld", task.replace("-", "_"), method, "state", int(r["seed"]), int(float(r["step"])),
                    float(r["success"]))
    out.mkdir(parents=True, exist_ok=True)
    target = out / CURVES_CSV
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CURVE_COLUMNS)
        for key, per_seed in sorted(series.items()):
            for frame, mean, low, high, seeds in _summarize(per_seed):
                writer.writerow([*key, frame, f"{mean:.4g}", f"{low:.4g}", f"{high:.4g}", seeds])
    tmp.replace(target)
    return target


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m mbrl.analysis.reference <raw reference dir> [<out dir>]")
    print(build_reference_data(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else DATA_DIR))
