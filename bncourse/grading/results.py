"""Scoring one check from a learner's outcome, and the result records the reports are made of.

`evaluate` runs in the grader's process (or, for feedback, in the learner's kernel): it computes
the expected result with the trusted reference and compares. Any surprise in the learner's
result (a missing key, a wrong type) scores 0 with a message; it never raises.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bncourse.grading.checks import Check, Exercise, roundtrip
from bncourse.grading.runner import describe_exception

__all__ = ["CheckResult", "ExerciseResult", "evaluate", "expected_result", "make_inputs",
           "clean_text"]


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
    try:
        expected = expected_result(exercise, check, inputs, expected_key)
    except Exception as exc:  # a bug in the grader: say so rather than blame the learner
        result.message = f"grader error computing the expected result: {describe_exception(exc)}"
        return result
    got = outcome.get("result")
    try:
        if not isinstance(got, dict):
            raise TypeError("the result is not a dict")
        message = check.compare(got, expected, inputs)
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
