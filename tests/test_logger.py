"""CSVLog (train.csv / eval.csv): rows kept and dropped when a run resumes."""
import pytest

from mbrl.logger import BASE_COLUMNS, CSVLog, is_complete

ROW = dict(zip(BASE_COLUMNS, (0, 0, 0, 0.0, 0.0, 1.0, 1.0)))


def write_rows(path, frames) -> CSVLog:
    log = CSVLog(path)
    for frame in frames:
        log.write({**ROW, "frame": frame, "step": frame // 2})
    return log


def test_truncate_after_drops_later_and_cut_off_rows(tmp_path):
    """A run killed while appending its frame-4000 eval row, resumed from a checkpoint at 4000: the
    cut-off row goes, so the trainer evaluates frame 4000 again (it resumes from the last kept eval)."""
    path = tmp_path / "eval.csv"
    write_rows(path, [0, 2000])
    with open(path, "a") as f:
        f.write("4000,2000,20,40.0")  # success, fps, wall_time never written
    with pytest.warns(RuntimeWarning, match="dropped 1 incomplete row"):
        kept = CSVLog(path).truncate_after(4000)
    assert [r["frame"] for r in kept] == ["0", "2000"]
    assert [r["frame"] for r in CSVLog(path).read()] == ["0", "2000"]
    # Rows after the frame go as before; complete rows at or before it stay.
    log = write_rows(tmp_path / "train.csv", [0, 2000, 4000, 6000])
    assert [r["frame"] for r in log.truncate_after(4000)] == ["0", "2000", "4000"]


def test_truncate_after_keeps_rows_with_empty_optional_columns(tmp_path):
    """Columns added later (agent_* metrics) are empty in early rows: those rows are complete."""
    log = write_rows(tmp_path / "train.csv", [0])
    log.write({**ROW, "frame": 2000, "agent_loss": 0.5})
    assert [r["frame"] for r in log.truncate_after(2000)] == ["0", "2000"]


def test_is_complete():
    required = ["frame", "success"]
    assert is_complete({"frame": "10", "success": "0.5", "extra": ""}, required)
    assert not is_complete({"frame": "10", "success": ""}, required)  # empty required value
    assert not is_complete({"frame": "10", "success": None}, required)  # fewer fields than the header
    assert not is_complete({"frame": "10", "success": "0.", None: ["x"]}, required)  # more fields
    assert not is_complete({"frame": "1e-", "success": "0.5"}, required)  # a number cut in half
