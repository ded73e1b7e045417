"""Benchmark analysis (hand-made curves with known answers), plots and table, and the grid runner
(a real tiny DrQ-v2 grid through Hydra multirun with the joblib launcher)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbrl.analysis import curves, reference

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import plot_curves  # noqa: E402


def make_run(root: Path, suite: str, task: str, world_model: str, seed: int, frames, scores,
             num_train_frames: int | None = None, demo: bool = False, preset: str | None = None,
             batch_size: int = 256) -> Path:
    """A run dir as mbrl/train_mbpo.py writes it (only what the analysis reads)."""
    run = root / suite / task / world_model / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    target = frames[-1] if num_train_frames is None else num_train_frames
    (run / ".hydra" / "config.yaml").write_text(
        f"task:\n  suite: {suite}\n  name: {task}\nworld_model:\n  name: {world_model}\n  pretrained: null\n"
        f"agent:\n  batch_size: {batch_size}\nseed: {seed}\nnum_train_frames: {target}\n"
        f"demo: {str(demo).lower()}\nlog:\n  video: {seed % 2 == 0}\n"  # log.* never splits a group,
        f"keep_freed_memory: {seed % 2 == 1}\n")  # nor a runtime setting
    if preset is not None:
        (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      preset: {preset}\n")
    metric = "episode_reward" if suite == "dmc" else "success"
    other = "success" if suite == "dmc" else "episode_reward"
    with open(run / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "step", "episode", metric, other, "fps", "wall_time"])
        for frame, score in zip(frames, scores):
            writer.writerow([frame, frame // 2, 0, score, 0.0, 1.0, 1.0])
    return run


# ----------------------------------------------------------------------------- estimators
def test_iqm_trims_a_quarter_at_each_end():
    assert curves.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert curves.iqm(np.array([100.0, 0.0, 1.0, 2.0, 3.0, -100.0, 4.0, 5.0])) == pytest.approx(2.5)
    assert curves.iqm(np.array([[1.0, 2, 3, 4], [10, 20, 30, 40]])) == pytest.approx([2.5, 25])  # along the last axis
    assert curves.iqm(np.array([7.0, 9.0, 11.0])) == pytest.approx(9.0)  # int(0.75) = 0: nothing cut


def test_bootstrap_mean_bands_known_cases():
    scores = np.array([[0.0, 0.5], [0.0, 0.5], [0.0, 0.5]])  # 3 seeds, identical: the band collapses
    mean, low, high = curves.bootstrap_mean(scores, reps=500)
    assert mean == pytest.approx([0.0, 0.5]) and low == pytest.approx(mean) and high == pytest.approx(mean)
    # Two seeds scoring 0 and 1: resampled means are 0, 0.5, 1 with p = 1/4, 1/2, 1/4, so the 95% interval is [0, 1].
    mean, low, high = curves.bootstrap_mean(np.array([[0.0], [1.0]]), reps=4000)
    assert (mean[0], low[0], high[0]) == (0.5, 0.0, 1.0)
    # Four seeds 0, 0, 1, 1 at 50% confidence: the middle half of Binomial(4, 1/2) / 4 is [0.25, 0.75].
    _, low, high = curves.bootstrap_mean(np.array([0.0, 0.0, 1.0, 1.0]), reps=20000, confidence=0.5)
    assert (float(low), float(high)) == (0.25, 0.75)


def test_stratified_bootstrap_and_profile():
    per_task = [np.array([1.0, 1.0]), np.array([0.0, 0.0, 0.0]), np.array([0.5])]
    # Mean and optimality gap weigh tasks: (1 + 0 + 0.5) / 3, not the pooled 2.5 / 6.
    point, low, high = curves.stratified_bootstrap(per_task, curves.AGGREGATES["Mean"], reps=300)
    assert point == pytest.approx(0.5) and low == pytest.approx(point) and high == pytest.approx(point)
    gap = curves.stratified_bootstrap(per_task, curves.AGGREGATES["Optimality gap"], reps=50)[0]
    assert gap == pytest.approx(0.5)
    assert curves.stratified_bootstrap(per_task, curves.AGGREGATES["Median"], reps=50)[0] == pytest.approx(0.5)
    # IQM is a statistic of runs (rliable): the 6 pooled scores, one cut at each end -> 0, 0, 0.5, 1.
    assert curves.stratified_bootstrap(per_task, curves.AGGREGATES["IQM"], reps=50)[0] == pytest.approx(1.5 / 4)
    # Profile: tasks weigh the same. tau = 0.25: task fractions 1, 0, 1 -> 2/3; tau = 0.75: 1, 0, 0 -> 1/3.
    prof, low, high = curves.performance_profile(per_task, np.array([0.25, 0.75, 1.0]), reps=100)
    assert prof == pytest.approx([2 / 3, 1 / 3, 0.0]) and low == pytest.approx(prof) and high == pytest.approx(prof)
    # Frames as a trailing axis: [S_t, F] per task -> [F]; task means [0, 1] and [1, 1].
    point, _, _ = curves.stratified_bootstrap([np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[1.0, 1.0]])],
                                              curves.AGGREGATES["Mean"], reps=10)
    assert point == pytest.approx([0.5, 1.0])


def test_mean_aggregate_weighs_each_task_the_same(tmp_path):
    """Five seeds that succeed on one task and one that fails on another: the mean over tasks is 0.5
    (pooling runs would say 5/6), in the table's Mean and in the aggregate curve alike."""
    frames = [0, 2000, 4000]
    for seed in range(1, 6):
        make_run(tmp_path, "metaworld", "plate-slide-v3", "none", seed, frames, [1.0] * 3)
    make_run(tmp_path, "metaworld", "hammer-v3", "none", 1, frames, [0.0] * 3)
    runs, _ = curves.load_runs([tmp_path])
    summaries = curves.summarize(curves.group_runs(runs), reps=200)
    agg = curves.aggregate_methods(summaries, reps=200)[0]
    assert agg.runs == 6 and agg.metrics["Mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert agg.metrics["Median"][0] == pytest.approx(0.5) and agg.metrics["Optimality gap"][0] == pytest.approx(0.5)
    frame, point, low, high = curves.aggregate_curve(summaries, reps=200)
    assert frame.tolist() == frames and point == pytest.approx([0.5] * 3) and low == pytest.approx(point)


def test_normalized_auc_and_align():
    assert curves.normalized_auc(np.array([0, 10, 20]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.75)
    a = curves.RunCurve(Path("a"), "metaworld", "metaworld/x", "m", 1, np.array([0, 10, 20]), np.array([0, .5, 1.]), 20)
    b = curves.RunCurve(Path("b"), "metaworld", "metaworld/x", "m", 2, np.array([0, 10]), np.array([.2, .4]), 20)
    frame, scores = curves.align([a, b])
    assert frame.tolist() == [0, 10] and scores.tolist() == [[0, .5], [.2, .4]]
    assert a.finished and not b.finished


def test_seeds_on_different_eval_grids_are_aligned_not_intersected(tmp_path):
    """Seeds evaluated at other frames (e.g. evals at episode ends of different lengths): the merged
    frames inside the common range, each seed holding its latest eval; a seed going past the
    common range is named in a warning."""
    make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 1, [0, 2000, 4000, 6000], [0.0, 0.2, 0.4, 0.6])
    make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 2, [0, 2150, 4100, 6100], [0.0, 0.3, 0.5, 0.7],
             num_train_frames=6000)
    runs, _ = curves.load_runs([tmp_path])
    with pytest.warns(curves.CurveWarning, match=r"ends at frame 6000.*seed\(s\) \[2\] went on to frame\(s\) \[6100\]"):
        (s,) = curves.summarize(curves.group_runs(runs), reps=100)
    assert s.frame.tolist() == [0, 2000, 2150, 4000, 4100, 6000]
    assert s.scores.tolist() == [[0.0, 0.2, 0.2, 0.4, 0.4, 0.6], [0.0, 0.0, 0.3, 0.3, 0.5, 0.5]]
    assert s.cut == {2: 6100} and s.final[0] == pytest.approx(0.55)
    assert curves.common_grid([np.array([0, 10]), np.array([5, 20])]).tolist() == [5, 10]
    with pytest.raises(ValueError, match="share no frame range"):
        curves.common_grid([np.array([0, 10]), np.array([20, 30])])


def test_cut_off_last_row_is_dropped_with_a_warning(tmp_path):
    run = make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 1, [0, 2000], [0.0, 0.5], num_train_frames=8000)
    with open(run / "eval.csv", "a") as f:
        f.write("4000,2000,0,60")  # the run was killed while writing this line
    with pytest.warns(curves.CurveWarning, match="ignoring its last row, which is incomplete"):
        loaded = curves.load_run(run)
    assert loaded.frame.tolist() == [0, 2000] and loaded.score.tolist() == [0.0, 0.5]
    # An empty metric in the last row (e.g. a resumed run that logged it without a value) is dropped too.
    (run / "eval.csv").write_text("frame,success\n0,0.0\n2000,0.5\n4000,\n")
    with pytest.warns(curves.CurveWarning, match="last row"):
        assert curves.load_run(run).frame.tolist() == [0, 2000]
    # A bad row anywhere else is corruption, not a write in progress: the run is skipped with the reason.
    (run / "eval.csv").write_text("frame,success\n0,0.0\n2000,oops\n4000,0.6\n")
    runs, problems = curves.load_runs([tmp_path])
    assert runs == [] and "row 2 is not numeric" in problems[0]


def test_task_keys():
    assert curves.task_key("metaworld", "plate-slide-v3") == "metaworld/plate_slide"
    assert curves.task_key("maniskill", "PegInsertionSide-v1") == "maniskill/peg_insertion_side"
    assert curves.task_key("dmc", "walker_walk") == "dmc/walker_walk"
    assert curves.task_key("libero", "libero_10", 3) == "libero/libero_10/task_3"


# ----------------------------------------------------------------------------- run dirs -> table and plots
@pytest.fixture
def hand_made_runs(tmp_path):
    """Two Meta-World tasks x two methods x 2-3 seeds, one DMC task, with answers known by hand."""
    root = tmp_path / "sweep"
    frames = [0, 1000, 2000]
    make_run(root, "metaworld", "plate-slide-v3", "none", 1, frames, [0.0, 0.2, 0.6])
    make_run(root, "metaworld", "plate-slide-v3", "none", 2, frames, [0.0, 0.4, 1.0])
    make_run(root, "metaworld", "plate-slide-v3", "ivideogpt", 1, frames, [0.0, 1.0, 1.0])
    make_run(root, "metaworld", "plate-slide-v3", "ivideogpt", 2, frames, [0.0, 1.0, 1.0])
    make_run(root, "metaworld", "plate-slide-v3", "ivideogpt", 3, frames[:2], [0.0, 0.5], num_train_frames=2000)
    make_run(root, "metaworld", "hammer-v3", "none", 1, frames, [0.0, 0.0, 0.0])
    make_run(root, "metaworld", "hammer-v3", "none", 2, frames, [0.0, 0.0, 0.2])
    make_run(root, "metaworld", "hammer-v3", "ivideogpt", 1, frames, [0.0, 0.5, 0.8])
    make_run(root, "metaworld", "hammer-v3", "ivideogpt", 2, frames, [0.0, 0.5, 0.8])
    make_run(root, "dmc", "walker_walk", "none", 1, [0, 500000], [30.0, 700.0])
    make_run(root, "dmc", "walker_walk", "none", 2, [0, 500000], [50.0, 900.0])
    (root / "broken").mkdir()
    (root / "broken" / "eval.csv").write_text("frame,success\n0,0.0\n")  # no .hydra/config.yaml
    return root


def test_load_group_summarize(hand_made_runs):
    runs, problems = curves.load_runs([hand_made_runs])
    assert len(runs) == 11 and len(problems) == 1 and "broken" in problems[0] and ".hydra" in problems[0]
    groups = curves.group_runs(runs)
    assert sorted(groups) == [("dmc/walker_walk", "DrQ-v2 (ours)"),
                              ("metaworld/hammer", "DrQ-v2 (ours)"), ("metaworld/hammer", "MBPO + iVideoGPT (ours)"),
                              ("metaworld/plate_slide", "DrQ-v2 (ours)"),
                              ("metaworld/plate_slide", "MBPO + iVideoGPT (ours)")]
    with pytest.warns(curves.CurveWarning, match=r"ends at frame 1000.*seed\(s\) \[1, 2\] went on"):
        by_key = {(s.task, s.method): s for s in curves.summarize(groups, reps=500)}
    drq = by_key["metaworld/plate_slide", "DrQ-v2 (ours)"]
    assert drq.mean.tolist() == pytest.approx([0.0, 0.3, 0.8])
    assert (drq.low[-1], drq.high[-1]) == (0.6, 1.0)  # two seeds: the band spans them
    assert drq.final == pytest.approx((0.8, 0.6, 1.0))
    assert drq.auc[0] == pytest.approx(np.mean([(0.1 + 0.4) / 2, (0.2 + 0.7) / 2]))  # 0.35
    # An unfinished seed cuts the group's curve to the frames all seeds reached, and is reported.
    mb = by_key["metaworld/plate_slide", "MBPO + iVideoGPT (ours)"]
    assert mb.seeds == [1, 2, 3] and mb.unfinished == [3] and mb.frame.tolist() == [0, 1000]
    assert mb.mean.tolist() == pytest.approx([0.0, 2.5 / 3])
    walker = by_key["dmc/walker_walk", "DrQ-v2 (ours)"]
    assert walker.final[0] == pytest.approx(800.0)
    assert walker.normalized_at(int(walker.frame[-1])).tolist() == pytest.approx([0.7, 0.9])

    # Methods are compared at the same budget per task: MBPO's plate_slide curve ends at 1000 (its
    # unfinished seed), so DrQ-v2's plate_slide finals are read there too, with a warning. And on the
    # same tasks: MBPO has no walker_walk, so DrQ-v2's walker_walk is left out of the aggregates.
    with pytest.warns(curves.CurveWarning) as record:
        aggs = {a.method: a for a in curves.aggregate_methods(list(by_key.values()), reps=500)}
    messages = " | ".join(str(w.message) for w in record)
    assert "metaworld/plate_slide / DrQ-v2 (ours) (frame 2000 > 1000)" in messages
    assert "left out: dmc/walker_walk / DrQ-v2 (ours)" in messages
    drq_agg = aggs["DrQ-v2 (ours)"]
    assert drq_agg.tasks == ["metaworld/hammer", "metaworld/plate_slide"] and drq_agg.runs == 4
    assert drq_agg.frames == {"metaworld/hammer": 2000, "metaworld/plate_slide": 1000}
    assert drq_agg.left_out == ["dmc/walker_walk / DrQ-v2 (ours)"]
    pooled = np.array([0.0, 0.2, 0.2, 0.4])  # normalized finals: hammer, plate_slide@1000
    assert drq_agg.metrics["Mean"][0] == pytest.approx(pooled.mean())
    assert drq_agg.metrics["IQM"][0] == pytest.approx(0.2)  # sorted 0 .2 .2 .4: cut int(1) = 1 each end
    assert drq_agg.metrics["IQM"][1] <= drq_agg.metrics["IQM"][0] <= drq_agg.metrics["IQM"][2]
    assert aggs["MBPO + iVideoGPT (ours)"].tasks == drq_agg.tasks


def test_aggregates_compare_methods_on_the_tasks_all_of_them_have(tmp_path, capsys):
    """A method run only on an easy task must not outrank one run on it and a hard one: the
    aggregates use the shared task only, and the summary names the curve left out."""
    frames = [0, 1000, 2000]
    for seed in (1, 2, 3):
        make_run(tmp_path, "metaworld", "plate-slide-v3", "none", seed, frames, [0.0, 0.8, 0.9])
        make_run(tmp_path, "metaworld", "hammer-v3", "none", seed, frames, [0.0, 0.1, 0.1])
        make_run(tmp_path, "metaworld", "plate-slide-v3", "ivideogpt", seed, frames, [0.0, 0.5, 0.6])
    runs, _ = curves.load_runs([tmp_path])
    summaries = curves.summarize(curves.group_runs(runs), reps=100)
    with pytest.warns(curves.CurveWarning, match=r"only the 1 task\(s\) every method has \(metaworld/plate_slide\); "
                                                 r"left out: metaworld/hammer / DrQ-v2 \(ours\)"):
        aggs = {a.method: a for a in curves.aggregate_methods(summaries, reps=100)}
    assert aggs["DrQ-v2 (ours)"].metrics["Mean"][0] == pytest.approx(0.9)  # not (0.9 + 0.1) / 2 = 0.5 < 0.6
    assert aggs["MBPO + iVideoGPT (ours)"].metrics["Mean"][0] == pytest.approx(0.6)
    assert plot_curves.main([str(tmp_path), "--out", str(tmp_path / "plots"), "--reps", "50"]) == 0
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "Aggregates over the 1 task(s) every method has" in summary
    assert "Left out, as not every method has the task: metaworld/hammer / DrQ-v2 (ours)." in summary
    assert "| DrQ-v2 (ours) | 1 | 3 | 0.90 [" in summary

    # No task shared at all: each task's curves, no aggregates (a ranking over different tasks would
    # mean nothing), and the summary says why.
    make_run(tmp_path / "apart", "metaworld", "hammer-v3", "none", 1, frames, [0.0, 0.1, 0.1])
    make_run(tmp_path / "apart", "metaworld", "plate-slide-v3", "ivideogpt", 1, frames, [0.0, 0.5, 0.6])
    capsys.readouterr()
    assert plot_curves.main([str(tmp_path / "apart"), "--reps", "50"]) == 0
    plots = tmp_path / "apart" / "plots"
    assert (plots / "curves_metaworld.png").is_file() and not (plots / "aggregate.png").exists()
    summary = (plots / "summary.md").read_text()
    assert "no task was run by every method" in summary and "Aggregates over" not in summary
    assert "| metaworld/hammer | DrQ-v2 (ours) |" in summary


def test_runs_with_other_settings_get_their_own_curve(tmp_path):
    """Runs of one task and method are pooled only when their learning settings match: another preset
    or an overridden key splits them (labelled, with a warning); a longer frame budget does not."""
    frames = [0, 1000, 2000]
    make_run(tmp_path / "smoke", "metaworld", "plate-slide-v3", "none", 1, frames, [0.0, 0.1, 0.2], preset="cpu",
             batch_size=64)
    make_run(tmp_path / "smoke", "metaworld", "plate-slide-v3", "none", 2, frames, [0.0, 0.1, 0.2], preset="cpu",
             batch_size=64, num_train_frames=4000)  # extended budget, same settings: pooled
    make_run(tmp_path / "ref", "metaworld", "plate-slide-v3", "none", 3, frames, [0.0, 0.5, 1.0], preset="reference")
    make_run(tmp_path / "ref", "metaworld", "hammer-v3", "none", 3, frames, [0.0, 0.5, 1.0], preset="reference")
    runs, _ = curves.load_runs([tmp_path])
    with pytest.warns(curves.CurveWarning, match=r"DrQ-v2 \(ours\): runs of one task differ in the preset"):
        groups = curves.group_runs(runs)
    cpu, ref = "DrQ-v2 (ours) [preset=cpu]", "DrQ-v2 (ours) [preset=reference]"
    assert sorted(groups) == [("metaworld/hammer", ref), ("metaworld/plate_slide", cpu),
                              ("metaworld/plate_slide", ref)]  # one label per variant, across tasks
    assert [r.seed for r in groups["metaworld/plate_slide", cpu]] == [1, 2]

    # Same preset, one key overridden: the key and its value name the curves.
    make_run(tmp_path / "more", "metaworld", "plate-slide-v3", "none", 4, frames, [0.0, 0.5, 1.0], preset="reference",
             batch_size=32)
    runs, _ = curves.load_runs([tmp_path / "ref", tmp_path / "more"])
    with pytest.warns(curves.CurveWarning, match="differ in agent.batch_size"):
        labels = sorted({method for _, method in curves.group_runs(runs)})
    assert labels == ["DrQ-v2 (ours) [agent.batch_size=256]", "DrQ-v2 (ours) [agent.batch_size=32]"]


def test_group_rejects_duplicate_seeds(tmp_path):
    make_run(tmp_path / "a", "metaworld", "hammer-v3", "none", 1, [0, 10], [0, 1])
    make_run(tmp_path / "b", "metaworld", "hammer-v3", "none", 1, [0, 10], [0, 1])
    runs, _ = curves.load_runs([tmp_path])
    with pytest.raises(curves.RunDirError, match=r"seed\(s\) \[1\]"):
        curves.group_runs(runs)


def test_plot_curves_writes_figures_and_a_matching_table(hand_made_runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot_curves.main([str(hand_made_runs), "--out", str(out), "--reps", "500"]) == 0
    for name in ("curves_metaworld.png", "curves_dmc.png", "aggregate.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    table = (out / "summary.md").read_text()
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| metaworld/") or line.startswith("| dmc/")}
    drq = rows["metaworld/plate_slide", "DrQ-v2 (ours)"]
    assert drq[2:6] == ["success", "2", "2000", "0.80 [0.60, 1.00]"] and drq[6].startswith("0.35 [")
    assert rows["metaworld/plate_slide", "MBPO + iVideoGPT (ours)"][3] == "3 (1 unfinished)"
    assert rows["dmc/walker_walk", "DrQ-v2 (ours)"][5] == "800.0 [700.0, 900.0]"
    # The aggregate rows and the published references (labelled as a guide) are in the summary.
    assert "| DrQ-v2 (ours) | 2 | 4 | 0.20 [" in table  # IQM of the tasks MBPO has too, plate_slide read at 1000
    assert reference.GUIDE_NOTE in table
    assert "| metaworld/hammer | TD-MPC2 (published, state, success at last step) | state | 3 |" in table
    assert "DrQ-v2 (published, pixels 84px) | pixels | 10 | 722.30 (frame 500000)" in table
    assert "Unfinished" in table and "skipped" in capsys.readouterr().err
    # The run dir skipped while loading is listed with its reason, not only printed.
    skipped = table.split("Skipped runs", 1)[1].split("\n\n#", 1)[0]
    assert f"- {hand_made_runs / 'broken'}: no .hydra/config.yaml" in skipped


@pytest.mark.filterwarnings("ignore::mbrl.analysis.curves.CurveWarning")
def test_plots_draw_every_curve_where_it_belongs(hand_made_runs, tmp_path, monkeypatch):
    """What the figures hold, read back from their axes: every method in every task panel, the
    published curves at their own frames, every method's curve over tasks, and each method's
    performance profile of the final scores (at the frame all methods reached on each task)."""
    figures: dict[str, dict[str, object]] = {}
    save = plot_curves.save_figure

    def keep_axes(fig, path):
        figures[path.name] = {ax.get_title(): ax for ax in fig.axes}
        save(fig, path)

    monkeypatch.setattr(plot_curves, "save_figure", keep_axes)
    assert plot_curves.main([str(hand_made_runs), "--out", str(tmp_path / "plots"), "--reps", "100"]) == 0

    def lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                for line in ax.get_lines()}

    runs, _ = curves.load_runs([hand_made_runs])
    summaries = curves.summarize(curves.group_runs(runs), reps=100)
    for s in summaries:
        drawn = lines(figures[f"curves_{s.suite}.png"][s.task.split("/", 1)[1]])
        x, y = drawn[f"{s.method}, {len(s.seeds)} seeds"]
        assert x.tolist() == s.frame.tolist() and y == pytest.approx(s.mean)
        marker = next(line.get_marker() for line in figures[f"curves_{s.suite}.png"][s.task.split("/", 1)[1]]
                      .get_lines() if line.get_label().startswith(s.method))
        assert marker == ("o" if len(s.frame) <= plot_curves.MARKED_EVALS else "None")  # one eval: still seen
    walker = lines(figures["curves_dmc.png"]["walker_walk"])
    published = reference.reference_curves("dmc/walker_walk")
    assert published
    for curve in published:
        keep = curve.frame <= 500000
        x, y = walker[f"{curve.label}, {curve.seeds} seeds"]
        assert x.tolist() == curve.frame[keep].tolist() and y == pytest.approx(curve.mean[keep])

    aggregate = figures["aggregate.png"]
    over_tasks = lines(aggregate["mean normalized score over tasks"])
    profiles = lines(aggregate["performance profile (final score)"])
    shared = [s for s in summaries if s.task != "dmc/walker_walk"]  # the tasks both methods have
    finals = {"metaworld/hammer": 2000, "metaworld/plate_slide": 1000}
    methods = sorted({s.method for s in summaries})
    assert len(methods) == 2 and sorted(over_tasks) == methods and sorted(profiles) == methods
    for method in methods:
        mine = [s for s in shared if s.method == method]
        frame, point, _, _ = curves.aggregate_curve(mine, reps=10)
        assert over_tasks[method][0].tolist() == frame.tolist() and over_tasks[method][1] == pytest.approx(point)
        profile = curves.performance_profile([s.normalized_at(finals[s.task]) for s in mine],
                                             plot_curves.PROFILE_TAUS, reps=10)[0]
        assert profiles[method][1] == pytest.approx(profile) and profile.max() > 0  # frame-0 scores are all 0


def test_aggregate_read_offs_only_for_the_papers_six_tasks(tmp_path, monkeypatch, capsys):
    """The iVideoGPT "aggregated" read-offs average its six tasks: drawn on the aggregate panel only
    when the plotted methods cover exactly those tasks."""
    drawn: list[str] = []
    monkeypatch.setattr(plot_curves, "draw_read_offs", lambda ax, task, x: drawn.append(task))
    six = sorted(reference.read_off_tasks())
    assert len(six) == 6 and "metaworld/plate_slide" in six
    for task in six:
        for seed in (1, 2):
            make_run(tmp_path / "six", "metaworld", task.split("/")[1], "none", seed, [0, 1000], [0.0, 0.5])
    assert plot_curves.main([str(tmp_path / "six"), "--out", str(tmp_path / "p6"), "--reps", "50"]) == 0
    assert drawn.count(reference.READ_OFF_AGGREGATE) == 1
    drawn.clear()
    for task in six[:2]:
        make_run(tmp_path / "two", "metaworld", task.split("/")[1], "none", 1, [0, 1000], [0.0, 0.5])
    assert plot_curves.main([str(tmp_path / "two"), "--out", str(tmp_path / "p2"), "--reps", "50"]) == 0
    assert reference.READ_OFF_AGGREGATE not in drawn and len(drawn) == 2  # the per-task read-offs stay
    assert "aggregate read-offs are not drawn" in capsys.readouterr().err


def test_plot_curves_reports_warnings_in_the_summary(tmp_path, capsys):
    make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 1, [0, 1000, 2000], [0.0, 0.5, 1.0])
    run = make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 2, [0, 1000], [0.0, 0.5], num_train_frames=2000)
    with open(run / "eval.csv", "a") as f:
        f.write("2000,1000")
    assert plot_curves.main([str(tmp_path), "--out", str(tmp_path / "plots"), "--reps", "50"]) == 0
    err = capsys.readouterr().err
    assert "[plot] warning:" in err and "ignoring its last row" in err and "went on to frame(s) [2000]" in err
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "Warnings:" in summary and "seed(s) [1] went on to frame(s) [2000]" in summary


def test_plot_curves_bad_input_is_a_clear_error(tmp_path, capsys):
    assert plot_curves.main([str(tmp_path / "nowhere")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plot_curves.main([str(tmp_path / "empty")]) == 1
    assert "no readable run" in capsys.readouterr().err

    # A method evaluated only after the other's curve ends on the task: nothing to compare there.
    make_run(tmp_path / "late", "metaworld", "plate-slide-v3", "none", 1, [8000], [0.7])
    make_run(tmp_path / "late", "metaworld", "plate-slide-v3", "ivideogpt", 1, [0, 2000, 4000], [0.0, 0.2, 0.4],
             num_train_frames=8000)
    assert plot_curves.main([str(tmp_path / "late"), "--reps", "20"]) == 1
    err = capsys.readouterr().err
    assert "[plot] error: these curves start after the last frame all methods reached" in err
    assert "metaworld/plate_slide / DrQ-v2 (ours) (first eval at frame 8000)" in err and "Traceback" not in err
    # One method's tasks share no frame range: no curve over tasks.
    make_run(tmp_path / "apart", "metaworld", "plate-slide-v3", "none", 1, [0, 1000], [0.0, 0.2])
    make_run(tmp_path / "apart", "metaworld", "hammer-v3", "none", 1, [5000, 6000], [0.0, 0.2])
    assert plot_curves.main([str(tmp_path / "apart"), "--reps", "20"]) == 1
    err = capsys.readouterr().err
    assert "[plot] error: DrQ-v2 (ours): no curve over tasks: the curves share no frame range" in err
    for reps, why in (("0", "must be at least 1, got 0"), ("-5", "must be at least 1, got -5"),
                      ("x", "invalid int value: 'x'")):
        with pytest.raises(SystemExit) as exit_:
            plot_curves.main([str(tmp_path / "apart"), "--reps", reps])
        assert exit_.value.code == 2 and f"argument --reps: {why}" in capsys.readouterr().err


def test_late_first_evals_are_named(tmp_path, capsys):
    """A seed evaluated only at the end (eval_every_frames=0) makes its group's curve and AUC start
    there: a warning names it, in summary.md too; the same for a task cutting a curve over tasks."""
    frames = [0, 2000, 4000, 6000, 8000]
    make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 1, frames, [0.0, 0.2, 0.4, 0.6, 0.8])
    make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 2, frames, [0.0, 0.1, 0.3, 0.5, 0.7])
    make_run(tmp_path, "metaworld", "plate-slide-v3", "none", 3, [8000], [0.9])
    runs, _ = curves.load_runs([tmp_path])
    with pytest.warns(curves.CurveWarning, match=r"curve and its AUC start at frame 8000.*not 0: seed\(s\) \[3\] "
                                                 r"were first evaluated at frame\(s\) \[8000\]"):
        (s,) = curves.summarize(curves.group_runs(runs), reps=20)
    assert s.late == {3: 8000} and s.frame.tolist() == [8000]
    assert plot_curves.main([str(tmp_path), "--out", str(tmp_path / "plots"), "--reps", "20"]) == 0
    assert "seed(s) [3] were first evaluated at frame(s) [8000]" in (tmp_path / "plots" / "summary.md").read_text()

    make_run(tmp_path / "tasks", "metaworld", "plate-slide-v3", "none", 1, [0, 1000, 2000], [0.0, 0.5, 1.0])
    make_run(tmp_path / "tasks", "metaworld", "hammer-v3", "none", 1, [1000, 2000], [0.0, 0.5])
    runs, _ = curves.load_runs([tmp_path / "tasks"])
    summaries = curves.summarize(curves.group_runs(runs), reps=20)
    with pytest.warns(curves.CurveWarning, match=r"curve over tasks starts at frame 1000.*start late: "
                                                 r"metaworld/hammer \(frame 1000\)"):
        frame, _, _, _ = curves.aggregate_curve(summaries, reps=20)
    assert frame.tolist() == [1000, 2000]


def test_reference_data():
    walker = {c.method: c for c in reference.reference_curves("dmc/walker_walk")}["drqv2"]
    assert walker.seeds == 10 and reference.value_at(walker, 500000) == pytest.approx(722.3, abs=0.1)
    assert reference.value_at(walker, 1_000_000) == pytest.approx(766.9, abs=0.1)  # DrQ-v2 walker_walk: 722 / 767
    methods = {(c.method, c.obs) for c in reference.reference_curves("metaworld/plate_slide")}
    assert {("mwm", "pixels"), ("dreamerv2", "pixels"), ("tdmpc2", "state"), ("sac", "state")} <= methods
    aggregate = {p.method: p.value for p in reference.read_off_points("metaworld/aggregate")}
    assert aggregate == {"ivideogpt_pretrained": 0.97, "ivideogpt_scratch": 0.80,
                         "dreamerv3_ivideogpt": 0.92, "drqv2_ivideogpt": 0.80}
    assert reference.reference_curves("metaworld/not_a_task") == []


def test_reference_frames_are_env_steps_as_published():
    """TD-MPC2's results/ already count env steps (its 2x action repeat applied before release,
    tdmpc2 issue #45): 2M-step Meta-World runs evaluated every 100k env steps (50k agent steps,
    its eval_freq). A 2x rescale would put the last point at 3.8M."""
    hammer = {c.method: c for c in reference.reference_curves("metaworld/hammer")}
    for method in ("tdmpc2", "dreamerv3", "sac"):
        frame = hammer[method].frame
        assert frame[0] == 0 and set(np.diff(frame).tolist()) == {100_000}
        assert 1_900_000 <= frame[-1] <= 2_000_000  # (TD-MPC2's seed 3 stops at 1.9M)
    # MWM: first eval after 5k prefill agent steps = 10k env steps, then every 10k agent steps = 20k.
    assert hammer["mwm"].frame[0] == 10_000 and set(np.diff(hammer["mwm"].frame).tolist()) == {20_000}


def test_build_reference_data_keeps_each_sources_step_units(tmp_path):
    raw = tmp_path / "raw"
    (raw / "drqv2_dmc").mkdir(parents=True)
    (raw / "metaworld").mkdir()
    (raw / "drqv2_dmc" / "walker_walk.csv").write_text(
        ",agent,task,seed,frame,episode_reward,hour\n0,DrQ-v2,walker_walk,1,0,10.0,0\n"
        "1,DrQ-v2,walker_walk,1,20000,30.0,1\n")
    (raw / "metaworld" / "mwm_pixels_scores.json").write_text(json.dumps(
        [{"task": "metaworld_hammer", "seed": 0, "method": "mwm", "steps": [10000, 30000], "success_rates": [0, 1]}]))
    (raw / "metaworld" / "tdmpc2_hammer_state.csv").write_text("step,success,seed\n0,0.0,1\n100000,1.0,1\n")
    built = reference.build_reference_data(raw, tmp_path / "out")
    with open(built, newline="") as f:
        frames = {(r["method"], int(r["frame"])) for r in csv.DictReader(f)}
    assert frames == {("drqv2", 0), ("drqv2", 20000), ("mwm", 10000), ("mwm", 30000), ("tdmpc2", 0),
                      ("tdmpc2", 100000)}


# ----------------------------------------------------------------------------- the grid runner
import benchmark  # noqa: E402  (scripts/benchmark.py)

# The tiny DrQ-v2 settings of tests/test_train.py: a full run on Meta-World in seconds.
TINY = ["task.episode_length=10", "num_seed_frames=40", "eval_every_frames=80", "num_eval_episodes=1",
        "save_every_frames=40", "agent.batch_size=16", "agent.hidden_dim=64", "agent.num_expl_steps=10",
        "replay.capacity=5000", "log.wandb=disabled", "log.tensorboard=false"]


def run_benchmark(root: Path, seeds: str, frames: int, *grid_args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "smoke", "tasks=[metaworld/plate_slide]",
           "methods=[none]", f"seeds={seeds}", "jobs=2", f"root={root}", "name=tiny", *grid_args,
           "--", *TINY, f"num_train_frames={frames}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def eval_frames(run: Path) -> list[int]:
    with open(run / "eval.csv", newline="") as f:
        return [int(r["frame"]) for r in csv.DictReader(f)]


def test_grid_runs_skips_finished_and_resumes(tmp_path, capsys):
    runs = tmp_path / "tiny" / "metaworld" / "plate_slide" / "none"
    first = run_benchmark(tmp_path, "[1,2]", 80)
    assert "2 of 2 runs to do" in first.stdout and "hydra/launcher=joblib" in first.stdout
    assert sorted(p.name for p in runs.iterdir()) == ["seed1", "seed2"]
    for seed in (1, 2):
        assert eval_frames(runs / f"seed{seed}") == [0, 80]
        assert (runs / f"seed{seed}" / "checkpoints" / "last.pt").is_file()
    before = {p: p.read_text() for p in runs.rglob("*.csv")}
    episodes = sorted(p.name for p in runs.rglob("*.npz"))

    again = run_benchmark(tmp_path, "[1,2]", 80)  # everything finished: nothing is launched
    assert "all 2 runs already finished; nothing to launch" in again.stdout
    # One more seed: the finished runs are skipped inside the multirun, the new one runs.
    more = run_benchmark(tmp_path, "[1,2,3]", 80)
    assert "1 of 3 runs to do" in more.stdout
    assert more.stdout.count("already finished (80 frames)") == 2, more.stdout[-3000:]
    assert eval_frames(runs / "seed3") == [0, 80]
    assert {p: p.read_text() for p in before} == before  # finished runs: no new rows, no new episodes
    assert sorted(p.name for p in runs.glob("seed[12]/episodes/*.npz")) == episodes

    # A longer schedule: the run continues from its checkpoint in its own sweep subdir.
    longer = run_benchmark(tmp_path, "[1]", 120)
    assert f"resumed {runs / 'seed1'} at frame 80" in longer.stdout
    assert eval_frames(runs / "seed1") == [0, 80, 120]

    # Other learning settings for trained runs: refused before launching, and by the trainer itself
    # (whose Hydra has rewritten .hydra/config.yaml by then: the run's own file is put back).
    saved = (runs / "seed1" / ".hydra" / "config.yaml").read_text()
    grid = ["smoke", "tasks=[metaworld/plate_slide]", "methods=[none]", "seeds=[1]", f"root={tmp_path}",
            "name=tiny", "--", *TINY, "num_train_frames=120"]
    assert benchmark.main([*grid, "agent.lr=0.5"]) == 1
    err = capsys.readouterr().err
    assert "seed1 was trained with agent.lr=0.0001 (this launch: 0.5)" in err and "another name=" in err
    assert "relaunch it with agent.lr=0.0001 " in err
    assert benchmark.main([*grid, "+agent.new_setting=2"]) == 1  # a key the run did not have, set by the user
    assert "seed1 was trained with agent.new_setting=(absent) (this launch: 2)" in capsys.readouterr().err
    direct = subprocess.run([sys.executable, str(REPO / "mbrl" / "train_mbpo.py"), f"resume={runs / 'seed1'}",
                             *TINY, "num_train_frames=120", "agent.lr=0.5"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"})
    assert direct.returncode == 1 and "[train] error: " in direct.stderr and "Traceback" not in direct.stderr
    assert "agent.lr=0.0001 (this launch: 0.5)" in direct.stderr
    assert (runs / "seed1" / ".hydra" / "config.yaml").read_text() == saved
    assert eval_frames(runs / "seed1") == [0, 80, 120]

    # The run dirs plot: three seeds at 80 frames (seed 1 is cut to the frames all reached).
    out = tmp_path / "plots"
    assert plot_curves.main([str(tmp_path / "tiny"), "--out", str(out), "--reps", "200"]) == 0
    table = (out / "summary.md").read_text()
    assert "| metaworld/plate_slide | DrQ-v2 (ours) + demos | success | 3 | 80 |" in table
    assert (out / "curves_metaworld.png").stat().st_size > 10_000


def test_benchmark_dry_run_and_bad_input(tmp_path, capsys):
    assert benchmark.main(["metaworld6", f"root={tmp_path}", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "6 tasks x 2 methods x 3 seeds = 36 runs" in out and "target 260000 frames" in out
    assert "task=metaworld/plate_slide,metaworld/hammer," in out and "preset=reference" in out
    assert not (tmp_path / "metaworld6").exists()
    assert benchmark.main(["metaworld6", "launcher=submitit_slurm", "slurm.partition=gpu", f"root={tmp_path}",
                           "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "hydra/launcher=submitit_slurm" in out and "hydra.launcher.partition=gpu" in out
    assert "hydra.launcher.max_num_timeout=3" in out

    # dry_run is parsed strictly: anything but true/false is an error, never a launch.
    for value in ("1", "yes", "on", ""):
        assert benchmark.main(["metaworld6", f"root={tmp_path}", f"dry_run={value}"]) == 1
        assert f"dry_run={value}: expected dry_run=true or dry_run=false" in capsys.readouterr().err
        assert not (tmp_path / "metaworld6").exists()
    assert benchmark.pop_dry_run(["seeds=[1]", "dry_run=TRUE"]) == (True, ["seeds=[1]"])
    assert benchmark.pop_dry_run(["dry_run=false", "jobs=2"]) == (False, ["jobs=2"])
    assert benchmark.pop_dry_run(["jobs=2"]) == (False, ["jobs=2"])
    with pytest.raises(benchmark.BenchmarkError, match="expected dry_run=true"):
        benchmark.pop_dry_run(["dry_run"])

    assert benchmark.main(["nope"]) == 1
    assert "no grid 'nope'" in capsys.readouterr().err
    assert benchmark.main(["smoke", "tasks=[metaworld/plate_slidee]"]) == 1
    assert "unknown task 'metaworld/plate_slidee'" in capsys.readouterr().err
    assert benchmark.main(["smoke", "methods=[dreamer]"]) == 1
    assert "unknown method 'dreamer'" in capsys.readouterr().err
    assert benchmark.main(["smoke", "seeds=[1,2,1]", f"root={tmp_path}", "dry_run=true"]) == 1
    assert "seeds lists 1 more than once" in capsys.readouterr().err
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "eval.csv").write_text("frame,success\n0,0.0\nxx,0.5\n80,1.0\n")
    with pytest.raises(benchmark.BenchmarkError, match="row 2 is incomplete or has no numeric frame"):
        benchmark.last_eval_frame(damaged)
    (damaged / "eval.csv").write_text("frame,success\n0,0.0\n8")  # killed while writing its last row
    assert benchmark.last_eval_frame(damaged) == 0
    assert benchmark.main(["smoke", "--", "agent.not_a_key=1"]) == 1
    assert "not_a_key" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--", "seed=5"], "seed=5 (after --): the benchmark sets seed itself; choose seeds with seeds=[...]"),
    (["--", "task=metaworld/hammer"], "sets task itself; choose tasks with tasks=[...]"),
    (["--", "world_model=ivideogpt"], "sets world_model itself; choose methods with methods=[...]"),
    (["--", "~resume"], "sets resume itself; every run is launched with resume=true"),
    (["--", "resume=false"], "sets resume itself"),
    (["--", "+hydra.sweep.dir=/elsewhere"], "sets hydra.sweep.dir itself; runs live in <root>/<name>/"),
    (["--", "hydra.run.dir=x"], "sets hydra.run.dir itself"),
    (["--", "preset=reference"], "sets preset itself; choose the preset with preset=<name>"),
    (['overrides=["demo=true","seed=3"]'], "seed=3 (in the grid's overrides: ['demo=true', 'seed=3']): the benchmark "
                                           "sets seed itself"),
])
def test_benchmark_refuses_overrides_of_the_keys_it_sets(tmp_path, capsys, args, message):
    """Hydra keeps an override's last value: one after `--` (or in the grid's overrides) would silently
    replace the grid's tasks, methods, seeds, resume=true or run dirs."""
    assert benchmark.main(["smoke", f"root={tmp_path}", "dry_run=true", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("[benchmark] error: ") and message in err and err.count("\n") == 1
    grid = benchmark.load_grid("smoke", [])
    assert benchmark.run_overrides(grid, ["task.episode_length=10", "agent.lr=0.1"])[-2:] == [
        "task.episode_length=10", "agent.lr=0.1"]  # keys inside a task or the agent are the user's


def test_benchmark_does_not_launch_while_its_runs_are_training(tmp_path, capsys):
    """Launching the grid again while a run trains would put a second trainer on its run dir."""
    from mbrl.run_lock import lock_run_dir

    grid = benchmark.load_grid("smoke", [f"root={tmp_path}"])
    overrides = benchmark.run_overrides(grid, [])
    cells = benchmark.grid_cells(grid, (tmp_path / grid.name).resolve(), overrides)
    held = lock_run_dir(cells[0].run_dir)  # as its trainer does
    try:
        assert benchmark.main(["smoke", f"root={tmp_path}", "dry_run=true"]) == 0
        assert "training now (0 frames evaluated)" in capsys.readouterr().out
        assert benchmark.main(["smoke", f"root={tmp_path}"]) == 1
        assert "1 runs of this grid are training now" in capsys.readouterr().err
    finally:
        held.close()
    assert not (tmp_path / grid.name / "benchmark.yaml").exists()  # nothing launched or written


def test_validation_cadence_does_not_split_curves_or_refuse_a_resume():
    """Validation draws from its own random stream, so like eval cadence it is schedule-only."""
    from mbrl.analysis.curves import learning_settings

    base = {"agent": {"lr": 1e-4}, "mbpo": {"validate_every_episodes": 10, "validate_batch": 4, "real_ratio": 0.5}}
    other = {"agent": {"lr": 1e-4}, "mbpo": {"validate_every_episodes": 2, "validate_batch": 8, "real_ratio": 0.5}}
    assert learning_settings(base) == learning_settings(other)
    assert learning_settings(base) != learning_settings({**other, "mbpo": {**other["mbpo"], "real_ratio": 0.25}})
