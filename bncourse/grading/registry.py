"""Every graded exercise, by id, and the course's pass rule (stated in lesson 00).

A module passes with at least `PASS_MARK` of its points; the certificate needs every module in
`REQUIRED_MODULES` to pass.
"""
from __future__ import annotations

from bncourse.grading import ex_backward, ex_forward, ex_inference, ex_module
from bncourse.grading.checks import Exercise

__all__ = ["PASS_MARK", "REQUIRED_MODULES", "NOTEBOOKS", "EXERCISES", "get", "module_exercises"]

PASS_MARK = 0.8
REQUIRED_MODULES = ("02", "03", "04", "05")
# The exercise notebook of each module (solutions/ and exercises/ use the same names).
NOTEBOOKS = {
    "02": "02_forward_exercises.ipynb",
    "03": "03_backward_exercises.ipynb",
    "04": "04_torch_module_exercises.ipynb",
    "05": "05_inference_exercises.ipynb",
}

EXERCISES: dict[str, Exercise] = {
    exercise.id: exercise
    for exercise in (ex_forward.EXERCISES + ex_backward.EXERCISES + ex_module.EXERCISES
                     + ex_inference.EXERCISES)
}


def get(exercise_id: str) -> Exercise:
    """The exercise with id `"<module>.<name>"`, e.g. `"02.batch_statistics"`."""
    if not isinstance(exercise_id, str):
        raise TypeError(f"exercise_id must be a string like '02.batch_statistics', "
                        f"got {type(exercise_id).__name__}")
    try:
        return EXERCISES[exercise_id]
    except KeyError:
        known = ", ".join(sorted(EXERCISES))
        raise ValueError(f"unknown exercise_id {exercise_id!r}; known: {known}") from None


def module_exercises(module: str) -> list[Exercise]:
    """The exercises of one module, in notebook order."""
    return [exercise for exercise in EXERCISES.values() if exercise.module == module]
