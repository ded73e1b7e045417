"""Append-only CSV logs that survive restarts: rows past the resumed step are dropped on open."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class CsvLog:
    """One CSV file with a ``step`` column; new metric names widen the header (file rewritten)."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.fields: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = [r for r in reader if resume_step is None or int(float(r["step"])) <= resume_step]
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new or not self.path.exists():
            self.fields += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)
