"""Pieces the lesson checks share: calls that would skip the exercise, reduction axes, the
checks of a module's prediction questions."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import tensor_attribute  # noqa: F401 (re-exported)

__all__ = ["IMPLEMENT_BN_FORBIDDEN", "tensor_attribute", "prediction_checks"]

# Calls that would let a learner skip the exercise of writing batch norm.
IMPLEMENT_BN_FORBIDDEN = (
    "bncourse.reference.batchnorm_forward",
    "bncourse.reference.batchnorm_backward",
    "bncourse.reference.batchnorm_inference",
    "bncourse.nn.batch_norm",
    "bncourse.nn.functional.batch_norm",
    "bncourse.nn.batchnorm.batch_norm",
    "torch.nn.functional.batch_norm",
    "torch.batch_norm",
    "torch.native_batch_norm",
    "torch.nn.modules.batchnorm._BatchNorm.forward",
    "bncourse.nn.batchnorm._BatchNorm.forward",
)


def _axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def prediction_checks(questions: dict, *, number_word: str = "a number",
                      wrong: str = "is not right") -> tuple:
    """One `Check` per question: `questions` maps a key to ``("number", value, tolerance,
    hint)`` or ``("choice", value, choices, hint)``; the learner's answer comes back as
    ``{"value": ...}``. A wrong answer gets the question's hint; an answer outside the
    choices, or a string where a number is asked, says so."""
    from bncourse.grading.checks import Check, fmt

    def compare(got, expected, inputs):
        kind, want, extra, hint = questions[inputs["key"]]
        value = got["value"]
        if kind == "number":
            if isinstance(value, str):
                return f"{inputs['key']}: give {number_word}, got the string {value!r}"
            if abs(value - want) <= extra:
                return None
            return f"{inputs['key']}: {fmt(value)} is not right. Hint: {hint}"
        if value not in extra:
            return f"{inputs['key']}: {value!r} is not one of the choices {list(extra)}"
        if value != want:
            return f"{inputs['key']}: {value!r} {wrong}. Hint: {hint}"
        return None

    return tuple(Check(f"prediction: {key}", (lambda k: lambda rng: {"key": k})(key), compare)
                 for key in questions)
