"""Errors raised by ``make_env``: one line that says what is wrong and what to do."""
from __future__ import annotations

import difflib
from typing import Iterable

# suite -> (what to install, its pip extra or None). Kept here so every message names the same fix.
# LIBERO has no extra: its robomimic brings torchvision, which install_sims.sh removes again.
_EXTRAS = {
    "metaworld": ("Meta-World", "metaworld"),
    "dmc": ("DeepMind Control (dm_control)", "dmc"),
    "maniskill": ("ManiSkill 3", "maniskill"),
    "libero": ("LIBERO", None),
}


class MissingSimulatorError(ImportError):
    """The simulator behind a suite is not installed (or cannot be imported)."""

    def __init__(self, suite: str, cause: BaseException | None = None, message: str | None = None):
        """``message`` replaces the default "<simulator> is not installed: pip install ..." for a
        missing part of an installed simulator (e.g. ManiSkill's motion planner)."""
        if message is None:
            what, extra = _EXTRAS.get(suite, (suite, suite))
            script = f"bash scripts/install_sims.sh {suite}"
            message = f"{what} is not installed: " + (
                f"pip install -e '.[{extra}]' -c constraints.txt (or {script})" if extra else script)
        if cause is not None:
            message += f" [import failed: {type(cause).__name__}: {cause}]"
        super().__init__(message)
        self.suite = suite


class UnknownTaskError(ValueError):
    """A suite or task name that does not exist."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        shown = ", ".join(valid) if len(valid) <= 60 else ", ".join(valid[:60]) + ", ..."
        super().__init__(f"unknown {kind} '{name}': {hint}valid names: {shown}")
        self.name, self.close_matches = name, close
