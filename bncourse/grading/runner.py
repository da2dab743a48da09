"""Call a learner's object for one check: time limit, recorded forbidden calls, outcome as data.

Used in two places: in the learner's own kernel by `bncourse.check` (feedback), and in the
grader's child process by `bncourse grade` (there through `drivers/_child.py`, which imports only
`drivers/_contract.py`, where the code below lives). Either way the outcome is a plain dict:
`{"status": ..., "message": ..., "result": ..., "calls": [...]}` with status one of "ok",
"not_implemented", "error", "timeout", "missing", "sealed".
"""
from __future__ import annotations

from bncourse.grading.checks import Exercise
from bncourse.grading.drivers._contract import (CheckTimeout, Recorder, call_driver,
                                                describe_exception, time_limit)
from bncourse.grading.drivers._contract import resolve as _resolve

__all__ = ["CheckTimeout", "Recorder", "run_task", "time_limit", "describe_exception"]


def run_task(exercise: Exercise, obj, inputs: dict, timeout: float | None,
             recorder: Recorder | None = None) -> dict:
    """Run `exercise.run(obj, inputs)` under a time limit; never raises (but
    KeyboardInterrupt)."""
    return call_driver(exercise.run, obj, exercise.name, exercise.kind, inputs, timeout, recorder)


_ = _resolve  # used by feedback.py
