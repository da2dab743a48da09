"""`results.evaluate`: the reference runs only when a check's comparison reads it, and a
failing reference is reported as the grader's error, never as the learner's."""
from __future__ import annotations

import pytest

from bncourse.grading.checks import Check, Exercise
from bncourse.grading.results import GraderError, LazyExpected, evaluate

CALLS = []


def _reference():
    def ref():
        CALLS.append("reference")
        return 3.0
    return ref


def _broken_reference():
    def ref():
        raise ZeroDivisionError("division by zero in the reference")
    return ref


def _run(fn, inputs):
    return {"value": fn()}


def _threshold(got, expected, inputs):  # a fixed target; the reference only words a hint
    if got["value"] > 2:
        return None
    return f"value {got['value']}, the reference gets {expected['value']}"


def _exact(got, expected, inputs):
    return None if got["value"] == expected["value"] else "different"


def _exercise(reference, compare):
    return Exercise(module="99", name="thing", kind="function", run=_run, reference=reference,
                    checks=(Check("a check", lambda rng: {}, compare),))


def _outcome(value):
    return {"status": "ok", "result": {"value": value}, "calls": []}


def test_a_passing_threshold_check_never_runs_the_reference():
    CALLS.clear()
    exercise = _exercise(_reference, _threshold)
    result = evaluate(exercise, exercise.checks[0], {}, _outcome(5.0))
    assert result.passed and CALLS == []


def test_a_failing_check_runs_the_reference_for_its_hint():
    CALLS.clear()
    exercise = _exercise(_reference, _threshold)
    result = evaluate(exercise, exercise.checks[0], {}, _outcome(1.0))
    assert not result.passed and CALLS == ["reference"]
    assert "the reference gets 3.0" in result.message


@pytest.mark.parametrize("compare", [_threshold, _exact])
def test_a_broken_reference_is_the_graders_error(compare):
    exercise = _exercise(_broken_reference, compare)
    result = evaluate(exercise, exercise.checks[0], {}, _outcome(1.0))
    assert result.points == 0
    assert result.message.startswith("grader error computing the expected result")
    assert "ZeroDivisionError" in result.message


def test_lazy_expected_is_a_read_only_mapping_computed_once():
    CALLS.clear()
    exercise = _exercise(_reference, _exact)
    expected = LazyExpected(exercise, exercise.checks[0], {})
    assert CALLS == []
    assert dict(expected) == {"value": 3.0} and len(expected) == 1 and "value" in expected
    assert CALLS == ["reference"]
    with pytest.raises(TypeError):
        expected["value"] = 4.0  # type: ignore[index]


def test_grader_error_is_a_runtime_error():
    assert issubclass(GraderError, RuntimeError)
