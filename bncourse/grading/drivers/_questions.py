"""The driver of the `questions` exercises of modules 02-05: the learner's
`questions(name, data)` answers a named question about a batch with a number or an array.

Runs in the learner's process: imports NumPy and `_contract` only."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array

__all__ = ["run_questions"]


def run_questions(fn, inputs):
    """questions(name, data) -> a number or an array of numbers."""
    data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs["data"].items()}
    value = fn(inputs["question"], data)
    if isinstance(value, (str, bytes)):
        raise SubmissionError(f"the answer to {inputs['question']!r} must be a number or an "
                              f"array of numbers, got the string {value!r:.40}")
    return {"value": as_array(value, f"the answer to {inputs['question']!r}").astype(np.float64)}
