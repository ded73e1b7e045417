"""One training process per run dir.

Two trainers in one run dir (a benchmark command launched again while its runs are still going, or
``resume=`` of a run that is still training) would write the same episode files and checkpoint and
interleave their logs. The trainer holds an exclusive ``flock`` on ``<run dir>/train.lock`` while it
lives. The OS drops the lock when the process ends, however it ends, so a killed run leaves no stale
lock behind. (Where ``fcntl`` does not exist, on Windows, runs are not locked.)
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

from mbrl.utils import ConfigValueError

LOCK_NAME = "train.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunInUseError(ConfigValueError):
    """Another process is training in this run dir."""


def lock_run_dir(run_dir: Path) -> IO[str] | None:
    """Take the run dir's lock for this process; returns the handle that holds it (close it to release)."""
    if fcntl is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunInUseError(f"another process is training in {run_dir} (it holds {run_dir / LOCK_NAME}): wait for "
                            "it to finish, or stop it, before launching into this run dir again") from None
    except OSError as e:  # a filesystem without flock (e.g. NFS without lockd): train, unguarded
        handle.close()
        warnings.warn(f"cannot lock {run_dir / LOCK_NAME} ({e}): training without the one-process-per-run-dir "
                      "guard; do not launch a second run into this dir while this one trains", RuntimeWarning,
                      stacklevel=2)
        return None
    return handle


def run_dir_in_use(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (for status reports; races are harmless there)."""
    if fcntl is None or not (run_dir / LOCK_NAME).is_file():
        return False
    try:
        with open(run_dir / LOCK_NAME) as handle:  # read-only: a run tree the user may only read
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # unreadable, or no flock on this filesystem: not known to be in use
        return False
    return False
