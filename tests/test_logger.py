"""CSVLog (train.csv / eval.csv): rows kept and dropped when a run resumes."""
import time

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


def test_truncate_after_drops_a_last_line_cut_inside_a_number(tmp_path):
    """Cut in its last column, a row still has every field and numbers that parse ("1.0" -> "1."),
    but its line has no terminator: it goes too, and is logged again."""
    path = tmp_path / "train.csv"
    log = write_rows(path, [0])
    log.write({**ROW, "frame": 2000, "buffer_size": 1000})
    path.write_bytes(path.read_bytes()[:-4])  # "...,1000\r\n" -> "...,10"
    with pytest.warns(RuntimeWarning, match="dropped 1 incomplete row"):
        kept = CSVLog(path).truncate_after(2000)
    assert [r["frame"] for r in kept] == ["0"]


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


def test_a_resumed_logger_replaces_the_rows_after_its_frame_in_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    from mbrl.logger import Logger

    def launch(frames, value, resume_at=None):
        logger = Logger(tmp_path, tensorboard=True, wandb_mode="disabled")
        if resume_at is not None:
            logger.resume_after(resume_at, ["train", "validation"])
        for frame in frames:
            logger.log("train", {**ROW, "frame": frame, "episode_reward": value + frame})
            logger.log("validation", {"frame": frame, "psnr": value + frame})
        logger.close()
    launch([10, 20, 30], 0.0)
    time.sleep(1.01)  # event files are named by the second they start in: as two launches' files are
    launch([20, 30, 40], 100.0, resume_at=15)  # killed after frame 30, resumed from its checkpoint at 15
    for name in ("train", "validation"):
        assert [r["frame"] for r in CSVLog(tmp_path / f"{name}.csv").read()] == ["10", "20", "30", "40"]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    shown = [(e.step, e.tensor_proto.float_val[0]) for e in events.Tensors("validation/psnr")]
    assert shown == [(10, 10.0), (20, 120.0), (30, 130.0), (40, 140.0)]


def test_write_video_is_atomic_and_leaves_no_temp_file_when_writing_fails(tmp_path, monkeypatch):
    import imageio.v2 as imageio
    import numpy as np

    from mbrl.video import write_video

    frames = np.zeros((3, 8, 8, 3), np.uint8)
    path = write_video(tmp_path / "eval.mp4", frames, fps=4)
    assert len(imageio.mimread(path)) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["eval.mp4"]

    def disk_full(target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(imageio, "mimwrite", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_video(tmp_path / "eval.mp4", frames, fps=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.mp4"]  # the old video, no temp file
