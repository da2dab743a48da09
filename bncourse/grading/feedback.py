"""`bncourse.check(exercise_id, obj)`: immediate feedback in the learner's notebook.

Runs the exercise's checks in the learner's own kernel on small seeded inputs and prints one
line per check (✓ or ✗, and for a failure what differs and a hint). It never raises, prints
nothing that varies between runs (no timings, no addresses), and stops each check after
`timeout` seconds with SIGALRM (main thread only: the kernel's thread; elsewhere no limit).
This is feedback, not grading: the grade comes from `bncourse grade`, which runs the same
checks on fresh inputs in a separate process.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field

from bncourse.grading.checks import SubmissionError, roundtrip
from bncourse.grading.notebook import forbidden_uses_in_source
from bncourse.grading.results import CheckResult, ExerciseResult, evaluate, make_inputs
from bncourse.grading.runner import Recorder, _resolve, describe_exception, run_task

__all__ = ["check", "CheckReport"]

PASS, FAIL = "✓", "✗"


@dataclass
class CheckReport:
    """What `check` found. `score` is the fraction of points earned (0 to 1)."""

    exercise_id: str
    result: ExerciseResult
    not_implemented: bool = False
    printed: bool = field(default=False, repr=False, compare=False)  # check() printed it

    @property
    def score(self) -> float:
        return self.result.score

    @property
    def passed(self) -> bool:
        return self.result.max_points > 0 and self.result.points == self.result.max_points

    def __repr__(self) -> str:
        return (f"CheckReport({self.exercise_id!r}, points={self.result.points}/"
                f"{self.result.max_points})")

    def _ipython_display_(self) -> None:
        # check() has printed the report; showing the repr as the cell's result would repeat
        # it. A report made with quiet=True is shown in full instead.
        if not self.printed:
            print(self.text())

    def text(self) -> str:
        r = self.result
        if self.not_implemented:
            return (f"{self.exercise_id}: not implemented yet (0/{r.max_points} points). "
                    "Replace the `raise NotImplementedError` line with your code, run the cell, "
                    "then run this check again.")
        lines = [f"{self.exercise_id}: {r.points}/{r.max_points} points"
                 + (" - all checks pass" if self.passed else "")]
        for c in r.checks:
            mark = PASS if c.passed else FAIL
            lines.append(f"  {mark} {c.name}" + ("" if c.passed else f": {c.message}"))
        return "\n".join(lines)


def _static_uses(exercise, obj) -> list[str]:
    """Forbidden names in the learner's source: attributes (F.batch_norm) and global names
    bound to a forbidden object (`from bncourse.reference import batchnorm_forward as bf`)."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return []
    uses = forbidden_uses_in_source(source, exercise.name, exercise.forbidden, aliases={})
    try:
        namespace = getattr(obj, "__globals__", None)
        if namespace is None:
            import sys

            namespace = vars(sys.modules[obj.__module__])
        originals = {}
        for dotted in exercise.forbidden:
            found = _resolve(dotted)
            if found is not None:
                value = getattr(*found)
                originals[id(getattr(value, "__wrapped__", value))] = dotted
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and node.id in namespace:
                value = namespace[node.id]
                dotted = originals.get(id(getattr(value, "__wrapped__", value)))
                if dotted and node.id != exercise.name:
                    uses.append(dotted)
    except Exception:
        pass
    return list(dict.fromkeys(uses))


def check(exercise_id, obj, *, timeout: float = 10.0, seed: int = 0, quiet: bool = False):
    """Run the checks of `exercise_id` on the learner's `obj`, print one line per check.

    Never raises. Returns a `CheckReport` (`.score` in [0, 1], `.passed`).
    """
    from bncourse.grading import registry

    try:
        exercise = registry.get(exercise_id)
    except (TypeError, ValueError) as exc:
        print(f"bncourse.check: {exc}")
        return CheckReport(str(exercise_id), ExerciseResult(str(exercise_id)))
    result = ExerciseResult(exercise.id)
    try:
        static = _static_uses(exercise, obj)
        recorder = Recorder(exercise.forbidden)
        statuses = []
        with recorder.patched():
            for index, chk in enumerate(exercise.checks):
                try:
                    inputs = make_inputs(exercise, index, seed)
                    outcome = run_task(exercise, obj, inputs,
                                       max(timeout, chk.timeout or 0), recorder)
                    if outcome["status"] == "ok":
                        try:
                            outcome["result"] = roundtrip(outcome["result"])
                        except SubmissionError as exc:
                            outcome.update(status="error", message=str(exc))
                    statuses.append(outcome["status"])
                    result.checks.append(evaluate(exercise, chk, inputs, outcome, static,
                                                  expected_key=(exercise.id, index, seed)))
                except Exception as exc:  # never raise into the learner's notebook
                    statuses.append("error")
                    result.checks.append(CheckResult(chk.name, 0, chk.points,
                                                     f"check failed: {describe_exception(exc)}"))
        report = CheckReport(exercise.id, result,
                             not_implemented=bool(statuses) and all(
                                 s == "not_implemented" for s in statuses))
    except BaseException as exc:  # KeyboardInterrupt included: feedback must not raise
        report = CheckReport(exercise.id, result)
        if not quiet:
            print(f"{exercise.id}: the check stopped ({describe_exception(exc)})")
            report.printed = True
        return report
    if not quiet:
        print(report.text())
        report.printed = True
    return report
