"""bncourse: Deep Dive into Batch Normalization.

The package the course notebooks build on. Data flows one way:

    reference (NumPy maths) -> nn (torch modules) -> data, train, diagnostics, plots -> notebooks

`grading` sits beside them and imports only what it grades.
"""
from bncourse._version import __version__
from bncourse.environment import setup

__all__ = ["__version__", "setup", "check"]


def check(exercise_id, obj, **kwargs):
    """Run the checks of exercise `exercise_id` on the learner's `obj` and print feedback.

    Never raises: an unfinished exercise prints "not implemented yet". Returns the result
    object of `bncourse.grading` (its `.score` is the fraction of points earned).
    """
    # Imported here so that `import bncourse` stays light and never depends on the grader.
    from bncourse.grading.feedback import check as _check

    return _check(exercise_id, obj, **kwargs)
