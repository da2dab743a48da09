"""Every graded exercise, by id, and the course's pass rule (stated in lesson 00).

Derived from the lesson files in `bncourse.grading.lessons` (one `lNN_*.py` a graded lesson).
A module passes with at least `PASS_MARK` of its points; the certificate needs every module in
`REQUIRED_MODULES` to pass.
"""
from __future__ import annotations

import importlib
import pkgutil

from bncourse.grading import lessons as _lessons
from bncourse.grading.checks import Exercise

__all__ = ["PASS_MARK", "REQUIRED_MODULES", "NOTEBOOKS", "EXERCISES", "get", "module_exercises"]

PASS_MARK = 0.8


def _lesson_files():
    names = sorted(info.name for info in pkgutil.iter_modules(_lessons.__path__)
                   if info.name[:1] == "l" and info.name[1:3].isdigit())
    return [importlib.import_module(f"{_lessons.__name__}.{name}") for name in names]


_LESSONS = _lesson_files()
# The exercise notebook of each module (solutions/ and exercises/ use the same names).
NOTEBOOKS: dict[str, str] = {lesson.MODULE: lesson.NOTEBOOK for lesson in _LESSONS}
REQUIRED_MODULES: tuple[str, ...] = tuple(lesson.MODULE for lesson in _LESSONS if lesson.REQUIRED)
EXERCISES: dict[str, Exercise] = {
    exercise.id: exercise for lesson in _LESSONS for exercise in lesson.EXERCISES
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
