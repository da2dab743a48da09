"""Scoring one check from a learner's outcome, and the result records the reports are made of.

`evaluate` runs in the grader's process (or, for feedback, in the learner's kernel): it computes
the expected result with the trusted reference and compares. Any surprise in the learner's
result (a missing key, a wrong type) scores 0 with a message; it never raises.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from bncourse.grading.checks import Check, Exercise, roundtrip
from bncourse.grading.runner import describe_exception

__all__ = ["CheckResult", "ExerciseResult", "evaluate", "expected_result", "make_inputs",
           "clean_text", "LazyExpected", "GraderError"]


@dataclass
class CheckResult:
    name: str
    points: int
    max_points: int
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.points == self.max_points

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ExerciseResult:
    id: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(c.points for c in self.checks)

    @property
    def max_points(self) -> int:
        return sum(c.max_points for c in self.checks)

    @property
    def score(self) -> float:
        return self.points / self.max_points if self.max_points else 0.0

    def to_json(self) -> dict:
        return {"id": self.id, "points": self.points, "max_points": self.max_points,
                "checks": [c.to_json() for c in self.checks]}


_expected_cache: dict = {}


def expected_result(exercise: Exercise, check: Check, inputs: dict, key=None) -> dict:
    """The trusted reference's result for these inputs (cached by `key` when given)."""
    if key is not None and key in _expected_cache:
        return _expected_cache[key]
    result = roundtrip(exercise.run(exercise.reference(), inputs))
    if key is not None:
        if len(_expected_cache) > 256:
            _expected_cache.clear()
        _expected_cache[key] = result
    return result


class LazyExpected(Mapping):
    """The reference's result, computed on first use.

    Many checks compare against a fixed target (a test accuracy above a threshold) and read the
    reference's result only to word the hint of a failed check. A passing submission then
    never pays for the reference's training run. Any error in the reference is raised on first
    use, inside `compare`; `evaluate` reports it as the grader's error.
    """

    def __init__(self, exercise: Exercise, check: Check, inputs: dict, key=None):
        self._args = (exercise, check, inputs, key)
        self._value = None

    def _result(self) -> dict:
        if self._value is None:
            try:
                self._value = expected_result(*self._args)
            except Exception as exc:
                raise GraderError(describe_exception(exc)) from exc
        return self._value

    def __getitem__(self, key):
        return self._result()[key]

    def __iter__(self):
        return iter(self._result())

    def __len__(self) -> int:
        return len(self._result())


class GraderError(RuntimeError):
    """The trusted reference failed: a bug in the grader, never the learner's fault."""


def clean_text(text, limit: int = 500) -> str:
    """Text from the learner's process made safe to print: one line, no control characters
    (no fake report lines, no terminal escapes), at most `limit` characters."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flag_message(uses) -> str:
    names = ", ".join(uses)
    return (f"flagged: uses {names}; this exercise asks you to write it yourself "
            "(0 points for this check)")


def evaluate(exercise: Exercise, check: Check, inputs: dict, outcome: dict | None,
             static_uses=(), expected_key=None) -> CheckResult:
    """Score one check. `outcome` is what `runner.run_task` returned (None: the learner's
    process died or hung during this check; then `static_uses` may carry the reason)."""
    result = CheckResult(check.name, 0, check.points)
    if static_uses:
        result.message = _flag_message(static_uses)
        return result
    if not isinstance(outcome, dict):
        result.message = "no result (the process running your code ended during this check)"
        return result
    status = outcome.get("status")
    if status != "ok":
        message = outcome.get("message")
        result.message = clean_text(message) if isinstance(message, str) and message else "failed"
        return result
    calls = [c for c in outcome.get("calls") or []
             if isinstance(c, str) and c in exercise.forbidden]
    if calls:
        result.message = _flag_message(calls)
        return result
    expected = LazyExpected(exercise, check, inputs, expected_key)
    got = outcome.get("result")
    try:
        if not isinstance(got, dict):
            raise TypeError("the result is not a dict")
        message = check.compare(got, expected, inputs)
    except GraderError as exc:  # a bug in the grader: say so rather than blame the learner
        result.message = f"grader error computing the expected result: {exc}"
        return result
    except Exception as exc:
        message = f"the result could not be compared ({describe_exception(exc)})"
    if message:
        result.message = message
    else:
        result.points = check.points
    return result


def make_inputs(exercise: Exercise, check_index: int, seed: int) -> dict:
    """The inputs of one check, from a generator seeded by (seed, exercise id, check index)."""
    import zlib

    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(exercise.id.encode()), check_index])
    return exercise.checks[check_index].make_inputs(rng)
