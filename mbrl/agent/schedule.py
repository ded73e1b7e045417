"""Scalar schedules written as strings in configs, with DrQ-v2's syntax.

    "0.2"                                   a constant
    "linear(init, final, duration)"         init -> final over `duration` steps, then final
    "step_linear(init, final1, duration1, final2, duration2)"
                                            init -> final1 over duration1 steps, then
                                            final1 -> final2 over the next duration2 steps

`step` is whatever counter the caller passes (the training loop passes agent steps, as
DrQ-v2's `global_step`). The string is parsed once, when the schedule is built, so a typo
fails at start-up rather than at the first update.
"""
from __future__ import annotations

import re

_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")
_ARITY = {"linear": 3, "step_linear": 5}


def _mix(start: float, end: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return (1.0 - progress) * start + progress * end


class Schedule:
    """A parsed schedule; call it with a step to get the value."""

    def __init__(self, spec: str | float | int):
        self.spec = str(spec)
        try:
            self.kind, self.args = "constant", (float(spec),)
            return
        except ValueError:
            pass
        match = _CALL.match(self.spec)
        if match is None or match.group(1) not in _ARITY:
            raise ValueError(
                f"cannot parse schedule {self.spec!r}: expected a number, "
                "'linear(init, final, duration)' or "
                "'step_linear(init, final1, duration1, final2, duration2)'.")
        self.kind = match.group(1)
        try:
            self.args = tuple(float(a) for a in match.group(2).split(","))
        except ValueError:
            raise ValueError(f"schedule {self.spec!r} has a non-numeric argument.") from None
        if len(self.args) != _ARITY[self.kind]:
            raise ValueError(f"schedule {self.spec!r}: {self.kind} takes {_ARITY[self.kind]} "
                             f"arguments, got {len(self.args)}.")
        durations = self.args[2::2]
        if any(d <= 0 for d in durations):
            raise ValueError(f"schedule {self.spec!r}: durations must be positive.")

    def __call__(self, step: int | float) -> float:
        if self.kind == "constant":
            return self.args[0]
        if self.kind == "linear":
            init, final, duration = self.args
            return _mix(init, final, step / duration)
        init, final1, duration1, final2, duration2 = self.args
        if step <= duration1:
            return _mix(init, final1, step / duration1)
        return _mix(final1, final2, (step - duration1) / duration2)

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r})"


def schedule(spec: str | float | int, step: int | float) -> float:
    """One-off evaluation of a schedule string (parses every call; prefer `Schedule`)."""
    return Schedule(spec)(step)
