"""Run logging: CSV files (train.csv, eval.csv, ...), TensorBoard and wandb (offline by default)."""
from __future__ import annotations

import csv
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

# Columns every row of train.csv / eval.csv starts with (the README's run-dir table).
BASE_COLUMNS = ("frame", "step", "episode", "episode_reward", "success", "fps", "wall_time")


def is_complete(row: Mapping[str | None, str | None], required: Iterable[str]) -> bool:
    """False for a row cut off or garbled while being written: fewer fields than the header (csv
    fills the missing ones with None), more (csv keys the extra ones None), or a required column
    empty or not a number."""
    if None in row or any(value is None for value in row.values()):
        return False
    try:
        for column in required:
            float(row[column])
    except (KeyError, TypeError, ValueError):
        return False
    return True


class CSVLog:
    """One CSV file. A row with new keys widens the header (the file is rewritten once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        if path.exists():
            with open(path, newline="") as f:
                self.columns = next(csv.reader(f), None) or []

    def _rewrite(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self.columns = columns

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def write(self, row: Mapping[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            first = [c for c in BASE_COLUMNS if c in row or c in self.columns]
            rest = sorted((set(self.columns) | set(row)) - set(first))
            self._rewrite(first + rest, self.read())
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(dict(row))

    def required_columns(self) -> list[str]:
        """The BASE_COLUMNS this file has: every row logs them (later columns may be empty in early rows)."""
        return [c for c in BASE_COLUMNS if c in self.columns] or ["frame"]

    def truncate_after(self, frame: int) -> list[dict[str, str]]:
        """Drop rows logged after ``frame`` and incomplete rows (a line cut off when the run was killed
        while writing it), so that a resumed run logs them again; returns the rows kept."""
        if not self.path.exists():
            return []
        rows = self.read()
        complete = [r for r in rows if is_complete(r, self.required_columns())]
        if complete and complete[-1] is rows[-1] and not self._ends_with_newline():
            complete.pop()  # the last line lacks its terminator: cut off in a column that parses as a number
        if len(complete) < len(rows):
            warnings.warn(f"{self.path}: dropped {len(rows) - len(complete)} incomplete row(s) (cut off while "
                          "being written); a resumed run logs them again", RuntimeWarning, stacklevel=2)
        kept = [r for r in complete if int(float(r["frame"])) <= frame]
        self._rewrite(self.columns, kept)
        return kept


class Logger:
    """Fans each logged row out to ``<name>.csv``, TensorBoard (``<name>/<key>``) and wandb."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, wandb_mode: str = "offline",
                 wandb_project: str = "mbrl-video-wm", config: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv: dict[str, CSVLog] = {}
        self.tensorboard, self.tb = tensorboard, None  # the writer starts at the first row (resume_after)
        self.first_frame = 0  # TensorBoard hides the rows of earlier launches from this frame on
        self.wandb = None
        if wandb_mode != "disabled":
            import wandb

            # one wandb id per run dir (a resumed run continues its wandb run; sweep runs never share one)
            run_id = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
            self.wandb = wandb.init(project=wandb_project, dir=str(self.run_dir), mode=wandb_mode,
                                    config=dict(config or {}), resume="allow", id=run_id,
                                    name="/".join(self.run_dir.parts[-4:]), reinit=True)
            # charts against env frames, as the CSVs and TensorBoard (wandb's own step counts log calls,
            # and starts again at 0 in a resumed launch)
            self.wandb.define_metric("frame")
            self.wandb.define_metric("*", step_metric="frame")

    def csv_log(self, name: str) -> CSVLog:
        if name not in self.csv:
            self.csv[name] = CSVLog(self.run_dir / f"{name}.csv")
        return self.csv[name]

    def resume_after(self, frame: int, names: Iterable[str]) -> dict[str, list[dict[str, str]]]:
        """A resumed run logs the rows after ``frame`` again: drop them from the CSV files ``names``
        (returns the rows kept per name), and have TensorBoard hide them. Every writer starts with a
        restart marker (SummaryWriter's ``purge_step``): TensorBoard hides a run's earlier rows from
        each marker's step on, except at the first marker it reads."""
        if self.tb is not None:
            raise RuntimeError("resume_after() comes before the first logged row.")
        self.first_frame = frame + 1
        return {name: self.csv_log(name).truncate_after(frame) for name in names}

    def log(self, name: str, row: Mapping[str, Any]) -> None:
        """Log one row (must contain ``frame``) under ``name`` (train, eval, world_model, ...)."""
        self.csv_log(name).write(row)
        frame = int(row["frame"])
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "frame"}
        if self.tensorboard and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.first_frame)
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"{name}/{key}", value, frame)
        if self.wandb is not None:
            self.wandb.log({f"{name}/{k}": v for k, v in scalars.items()} | {"frame": frame})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
