"""Reward curves of many runs: mean over seeds with 95% bootstrap bands per task and method, IQM and
performance profiles across tasks, published reference curves, and a markdown table.

    python scripts/plot_curves.py runs/benchmark/metaworld6
    python scripts/plot_curves.py runs/benchmark/smoke runs/metaworld/plate_slide/none/2025*_seed3 --out plots/

Every directory at or below the given paths that holds an ``eval.csv`` is a run; its method
(world model; ``none`` = DrQ-v2), task and seed come from its ``.hydra/config.yaml``; seeds whose
learning settings or preset differ are not pooled but plotted as separate, labelled curves (see
``mbrl/analysis/curves.py``). Success rate is plotted for Meta-World / ManiSkill / LIBERO, return
for DMC, against env frames. Warnings (seeds cut to a common range, cut-off eval rows, split
groups, tasks left out of the cross-method aggregates because not every method has them) and the
run dirs skipped (with the reason) are printed and listed in ``summary.md``.
Writes ``curves_<suite>.png``, ``aggregate.png`` and ``summary.md`` to ``--out`` (default: a
``plots/`` folder inside the first path).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mbrl.analysis import reference as ref  # noqa: E402
from mbrl.analysis.curves import (AGGREGATES, BOOTSTRAP_REPS, CONFIDENCE, CurveWarning,  # noqa: E402
                                  GroupSummary, MethodAggregate, aggregate_curve,
                                  aggregate_methods, group_runs, load_runs, markdown_table, metric_for_suite,
                                  performance_profile, summarize)
from mbrl.utils import positive_int  # noqa: E402

PANEL_SIZE = (4.0, 3.0)  # inches per task panel
MAX_COLUMNS = 3  # task panels per row
PROFILE_TAUS = np.linspace(0.0, 1.0, 101)  # thresholds of the performance profile (normalized score)
BAND_ALPHA = 0.2  # opacity of confidence bands
MARKED_EVALS = 20  # curves with at most this many evals also mark each eval (a single eval shows as a point)
REFERENCE_STYLE = {"pixels": "--", "state": ":"}  # line style of published curves by observation type
METHOD_COLORS = ("tab:blue", "tab:red", "black", "tab:purple", "tab:cyan", "tab:olive")  # ours, strong
REFERENCE_PALETTE = tuple(c for i, c in enumerate(plt.get_cmap("Dark2").colors) if i != 1)  # muted, no red/orange
READ_OFF_MARKERS = "*os^DvP"  # one shape per read-off method, in reference.LABELS order
READ_OFF_COLOR = "dimgray"
DPI = 120
YLABEL = {"success": "success rate", "episode_reward": "episode return"}


def method_colors(methods: list[str]) -> dict[str, str]:
    return {m: METHOD_COLORS[i % len(METHOD_COLORS)] for i, m in enumerate(sorted(set(methods)))}


def reference_color(method: str) -> tuple:
    """A fixed colour per published curve (the order of reference.LABELS), the same in every figure."""
    order = list(ref.LABELS)
    return REFERENCE_PALETTE[(order.index(method) if method in order else len(order)) % len(REFERENCE_PALETTE)]


def read_off_marker(method: str) -> str:
    order = [m for m in ref.LABELS if "read off" in ref.LABELS[m]]
    return READ_OFF_MARKERS[(order.index(method) if method in order else len(order)) % len(READ_OFF_MARKERS)]


def draw_read_offs(ax: plt.Axes, task: str, x: float) -> None:
    """Published final values with no frame axis: markers on the right edge, labelled as read at the
    paper's (unstated) budget, which a short run's right edge is not."""
    for point in ref.read_off_points(task):
        ax.plot([x], [point.value], marker=read_off_marker(point.method), ms=7, color=READ_OFF_COLOR,
                mfc="white", mew=1.3, ls="none", clip_on=False, zorder=5,
                label=f"{point.label}: final value (paper's budget)")


def frame_formatter(ax: plt.Axes) -> None:
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else (f"{x / 1e3:g}k" if x >= 1e3 else f"{x:g}")))


def draw_references(ax: plt.Axes, task: str, xmax: float) -> None:
    """Published curves (within our frame range) and read-off final values (markers at the right edge)."""
    for curve in ref.reference_curves(task):
        keep = curve.frame <= xmax
        if keep.sum() == 0:
            continue
        ax.plot(curve.frame[keep], curve.mean[keep], REFERENCE_STYLE.get(curve.obs, "--"),
                color=reference_color(curve.method), lw=1.2, alpha=0.9, label=f"{curve.label}, {curve.seeds} seeds")
    draw_read_offs(ax, task, xmax)


def plot_suite(suite: str, summaries: list[GroupSummary], colors: dict[str, tuple], out: Path,
               references: bool) -> Path:
    tasks = sorted({s.task for s in summaries})
    cols = min(MAX_COLUMNS, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), squeeze=False)
    metric = metric_for_suite(suite)
    for ax, task in zip(axes.flat, tasks):
        mine = [s for s in summaries if s.task == task]
        xmax = max(float(s.frame[-1]) for s in mine)
        for s in mine:
            ax.plot(s.frame, s.mean, color=colors[s.method], lw=2, label=f"{s.method}, {len(s.seeds)} seeds",
                    marker="o" if len(s.frame) <= MARKED_EVALS else None, ms=3)
            ax.fill_between(s.frame, s.low, s.high, color=colors[s.method], alpha=BAND_ALPHA, lw=0)
        if references:
            draw_references(ax, task, xmax)
        ax.set_title(task.split("/", 1)[1], fontsize=10)
        ax.set_xlabel("env frames")
        ax.set_ylabel(YLABEL[metric])
        if metric == "success":
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(0, xmax)
        frame_formatter(ax)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    band = f"{100 * CONFIDENCE:.0f}% bootstrap CI over seeds"
    title = f"{suite}: mean eval {YLABEL[metric]} ({band})"
    if references:
        title += f"\n{ref.GUIDE_NOTE} (dashed: pixels, dotted: state, markers: paper read-offs)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    path = out / f"curves_{suite}.png"
    save_figure(fig, path)
    return path


def read_offs_match(summaries: list[GroupSummary]) -> bool:
    """The paper's aggregate read-offs are a mean over its six tasks: they apply only when every
    plotted method covers exactly those tasks."""
    tasks = ref.read_off_tasks()
    return all({s.task for s in summaries if s.method == m} == tasks for m in {s.method for s in summaries})


def plot_aggregate(summaries: list[GroupSummary], aggregates: list[MethodAggregate], colors: dict[str, tuple],
                   out: Path, reps: int, references: bool) -> Path:
    """Pooled normalized score over frames, interval estimates of the final score, performance profile,
    all over the tasks the aggregates use (those every method has: ``curves.shared_tasks``)."""
    methods = [a.method for a in aggregates]
    summaries = [s for s in summaries if s.task in aggregates[0].frames]
    names = list(AGGREGATES)
    half = len(names) // 2
    fig, axes = plt.subplot_mosaic([["curve"] * half + ["profile"] * (len(names) - half), names],
                                   figsize=(2.6 * len(names), 6.4), height_ratios=[3, 2])
    ax = axes["curve"]
    for method in methods:
        frame, point, low, high = aggregate_curve([s for s in summaries if s.method == method], reps=reps)
        ax.plot(frame, point, color=colors[method], lw=2, label=method)
        ax.fill_between(frame, low, high, color=colors[method], alpha=BAND_ALPHA, lw=0)
    if references and read_offs_match(summaries):
        draw_read_offs(ax, ref.READ_OFF_AGGREGATE, ax.get_xlim()[1])
    elif references and any(s.suite == "metaworld" for s in summaries):
        print(f"[plot] note: the iVideoGPT aggregate read-offs are not drawn: they average its "
              f"{len(ref.read_off_tasks())} tasks, and the plotted methods do not cover exactly those",
              file=sys.stderr)
    ax.set_title("mean normalized score over tasks", fontsize=10)
    ax.set_xlabel("env frames")
    frame_formatter(ax)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)

    ax = axes["profile"]
    for method in methods:
        per_task = [s.normalized_at(aggregates[0].frames[s.task]) for s in summaries if s.method == method]
        prof, low, high = performance_profile(per_task, PROFILE_TAUS, reps=reps)
        ax.plot(PROFILE_TAUS, prof, color=colors[method], lw=2, label=method)
        ax.fill_between(PROFILE_TAUS, low, high, color=colors[method], alpha=BAND_ALPHA, lw=0)
    ax.set_title("performance profile (final score)", fontsize=10)
    ax.set_xlabel(r"normalized score $\tau$")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.grid(alpha=0.3)

    for name in names:
        ax = axes[name]
        for y, a in enumerate(aggregates):
            point, low, high = a.metrics[name]
            ax.barh(y, high - low, left=low, height=0.6, color=colors[a.method], alpha=0.7)
            ax.plot([point, point], [y - 0.3, y + 0.3], color="k", lw=1.5)
        ax.set_yticks(range(len(aggregates)), [a.method for a in aggregates] if name == names[0] else [], fontsize=8)
        ax.set_ylim(-0.6, len(aggregates) - 0.4)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("normalized score")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Across tasks ({100 * CONFIDENCE:.0f}% stratified-bootstrap CIs; score = success rate, or "
                 "DMC return / 1000; final = the last frame all methods reached on the task)", fontsize=10)
    fig.tight_layout()
    handles: dict[str, object] = {}
    for key in ("curve", "profile"):
        for h, label in zip(*axes[key].get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.6), fontsize=8,
               frameon=False)
    path = out / "aggregate.png"
    save_figure(fig, path)
    return path


def save_figure(fig: plt.Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")  # keeps the legend outside the panels
    plt.close(fig)
    os.replace(tmp, path)


def reference_table(summaries: list[GroupSummary]) -> str:
    """Published values at each task's final frame, for the summary (a guide only)."""
    lines = ["| task | reference | obs | seeds | value at our last frame |", "| --- | --- | --- | --- | --- |"]
    for task in sorted({s.task for s in summaries}):
        frame = max(int(s.frame[-1]) for s in summaries if s.task == task)
        for curve in ref.reference_curves(task):
            value = ref.value_at(curve, frame)
            if value is not None:
                lines.append(f"| {task} | {curve.label} | {curve.obs} | {curve.seeds} | {value:.2f} (frame "
                             f"{int(curve.frame[curve.frame <= frame][-1])}) |")
        for point in ref.read_off_points(task):
            lines.append(f"| {task} | {point.label} | pixels | - | {point.value:.2f} (end of its curve) |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def curve_notes(summaries: list[GroupSummary], caught: list[warnings.WarningMessage],
                skipped: list[str] = ()) -> str:
    """Unfinished seeds, the analysis's warnings (cut seeds, dropped rows, split groups, tasks left out
    of the aggregates) and the run dirs skipped while loading (each with its reason), for summary.md."""
    unfinished = [f"{s.task} / {s.method}: seeds {s.unfinished}" for s in summaries if s.unfinished]
    text = ""
    if unfinished:
        text += "\nUnfinished (curves end at the frames all seeds reached): " + "; ".join(unfinished) + "\n"
    if caught:
        text += "\nWarnings:\n\n" + "".join(f"- {w.message}\n" for w in caught)
    if skipped:
        text += "\nSkipped runs (not in the curves or the table):\n\n" + "".join(f"- {p}\n" for p in skipped)
    return text


def report(problems: list[str], caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    """Print skipped run dirs and the analysis's warnings to stderr; show other warnings as Python
    would. Returns the CurveWarnings (for summary.md)."""
    for problem in problems:
        print(f"[plot] skipped: {problem}", file=sys.stderr)
    for w in caught:
        if not issubclass(w.category, CurveWarning):  # not ours: shown as Python would have
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    ours = [w for w in caught if issubclass(w.category, CurveWarning)]
    for w in ours:
        print(f"[plot] warning: {w.message}", file=sys.stderr)
    return ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run dirs or sweep dirs (searched for eval.csv)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first path>/plots)")
    parser.add_argument("--reps", type=positive_int, default=BOOTSTRAP_REPS,
                        help="bootstrap resamples per interval (at least 1)")
    parser.add_argument("--no-reference", action="store_true", help="leave published reference curves out")
    args = parser.parse_args(argv)
    out = args.out or Path(args.paths[0]) / "plots"
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CurveWarning)
        try:
            runs, problems = load_runs(args.paths)
            if runs:  # every estimate and figure; ValueError (RunDirError too): data that cannot be compared
                summaries = summarize(group_runs(runs), reps=args.reps)
                aggregates = aggregate_methods(summaries, reps=args.reps)
                out.mkdir(parents=True, exist_ok=True)
                colors = method_colors([s.method for s in summaries])
                written = [plot_suite(suite, [s for s in summaries if s.suite == suite], colors, out,
                                      not args.no_reference) for suite in sorted({s.suite for s in summaries})]
                if aggregates:  # none when no task is shared by every method (a warning says so)
                    written.append(plot_aggregate(summaries, aggregates, colors, out, args.reps,
                                                  not args.no_reference))
        except (ValueError, FileNotFoundError) as e:
            report(problems, caught)
            print(f"[plot] error: {e}", file=sys.stderr)
            return 1
    caught = report(problems, caught)
    if not runs:
        print(f"[plot] error: no readable run (a dir with eval.csv and .hydra/config.yaml) under "
              f"{', '.join(args.paths)}", file=sys.stderr)
        return 1
    table = markdown_table(summaries, aggregates)
    text = f"# Benchmark summary\n\nRuns: {len(runs)} from {', '.join(map(str, args.paths))}\n\n{table}"
    text += curve_notes(summaries, caught, problems)
    refs = reference_table(summaries) if not args.no_reference else ""
    if refs:
        text += f"\n## Published references ({ref.GUIDE_NOTE})\n\n{refs}"
    summary = out / "summary.md"
    tmp = summary.with_name(".summary.md.tmp")
    tmp.write_text(text)
    os.replace(tmp, summary)
    written.append(summary)
    print(table)
    for path in written:
        print(f"[plot] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
