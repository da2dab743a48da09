"""The vocabulary of the grader: exercises, checks, comparisons with hints, safe result transport.

An `Exercise` names the learner's object (`"02.batch_statistics"` -> `batch_statistics` in the
module-02 notebook) and has a *driver*, `run(obj, inputs) -> result`, that calls the object on
grader-made inputs and turns whatever comes back into plain data (arrays, numbers, strings).
The same driver runs the trusted reference object in the grader's process; each `Check` then
compares the two results and returns `None` (pass) or a message with a hint.

Results cross the process boundary as JSON with arrays as `.npy` bytes (`encode`/`decode`):
never pickle, so nothing a learner's process sends can run code in the grader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# The transport and the driver's helpers live with the drivers (they run in the learner's process).
from bncourse.grading.drivers._contract import (MAX_ARRAY_BYTES, SubmissionError, _describe,
                                                as_array, decode, encode, roundtrip, unpack)

__all__ = [
    "Check",
    "Exercise",
    "SubmissionError",
    "as_array",
    "unpack",
    "array_mismatch",
    "encode",
    "decode",
    "fmt",
]


@dataclass(frozen=True)
class Check:
    """One graded check: inputs from a seeded generator, a comparison with hints.

    make_inputs(rng) -> dict of NumPy arrays and Python scalars (picklable, sent to the learner's
    process); compare(got, expected, inputs) -> None when the check passes, else a message.
    timeout: a longer time limit for this check (a short training run), else the grader's.
    """

    name: str
    make_inputs: Callable[[np.random.Generator], dict]
    compare: Callable[[dict, dict, dict], str | None]
    points: int = 1
    timeout: float | None = None  # seconds, for a check slower than the default limit


@dataclass(frozen=True)
class Exercise:
    """A graded exercise: the learner's object `name` in module `module`'s notebook.

    run(obj, inputs) -> dict: the driver, shared by learner and reference.
    reference() -> the trusted object the grader compares against (imported lazily).
    forbidden: dotted names the learner's code must not call (it is the exercise to write them).
    implements_bn: the exercise asks the learner to write batch norm itself, or to compute by
        hand what it computes (the questions exercises): its checks run in a sealed process (no
        course BN code, torch's batch-norm kernels disabled; `sandbox.py`).
    uses_course_layers: the learner's code may import `bncourse.nn`, `bncourse.models`, ...
        (lessons 06 on); only the grading references stay out of its reach.
    """

    module: str
    name: str
    kind: str  # "function" or "class"
    run: Callable[[Any, dict], dict]
    reference: Callable[[], Any]
    checks: tuple[Check, ...]
    forbidden: tuple[str, ...] = field(default=())
    implements_bn: bool = False
    uses_course_layers: bool = False

    @property
    def id(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def max_points(self) -> int:
        return sum(check.points for check in self.checks)


def fmt(value, other=None) -> str:
    """A number with 4 significant digits (deterministic, short).

    With `other`, as many digits (up to 10) as it takes for the two to print differently, so
    that "got 0.8758, expected 0.8758" never happens.
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        return repr(value)[:40]
    digits = 4
    if other is not None:
        other = float(other)
        while digits < 10 and f"{value:.{digits}g}" == f"{other:.{digits}g}" and value != other:
            digits += 1
    return f"{value:.{digits}g}"


def _index(flat_index: int, shape) -> str:
    return str(tuple(int(i) for i in np.unravel_index(flat_index, shape)))


def array_mismatch(got, expected, what: str, rtol: float, atol: float, *, dtype=None,
                   hints=(), shape_hints=()) -> str | None:
    """None when `got` matches `expected` within tolerances, else what differs and a hint.

    hints: (text, make_alternative) pairs: when `got` matches `make_alternative()` (a typical
    mistake computed from the same inputs), the message ends with `Hint: text`.
    shape_hints: (text, predicate(got_shape)) pairs for a wrong shape.
    """
    got = np.asarray(got)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        message = f"{what} has shape {got.shape}, expected {expected.shape}"
        for text, predicate in shape_hints:
            try:
                if predicate(got.shape):
                    return f"{message}. Hint: {text}"
            except Exception:
                continue
        return message
    if dtype is not None and got.dtype != np.dtype(dtype):
        return (f"{what} has dtype {got.dtype}, expected {np.dtype(dtype)} "
                f"(keep the dtype of the input)")
    if got.dtype == np.bool_ or not np.issubdtype(got.dtype, np.number):
        got = got.astype(np.float64)
    got64 = got.astype(np.complex128 if np.iscomplexobj(got) else np.float64)
    exp64 = expected.astype(np.float64)
    bad_nan = np.isnan(got64) & ~np.isnan(exp64)
    if bad_nan.any():
        first = int(np.flatnonzero(bad_nan)[0])
        return f"{what} contains NaN (first at index {_index(first, got.shape)})"
    close = np.isclose(got64, exp64, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return None
    first = int(np.flatnonzero(~close)[0])
    scale = max(float(np.nanmax(np.abs(exp64))) if exp64.size else 0.0, 1e-300)
    rel = float(np.nanmax(np.abs(got64 - exp64))) / scale
    message = (f"{what} differs: at index {_index(first, got.shape)} got "
               f"{fmt(np.real(got64.flat[first]), exp64.flat[first])}, expected "
               f"{fmt(exp64.flat[first], np.real(got64.flat[first]))} "
               f"(max error relative to max |expected|: {rel:.2g})")
    for text, make_alternative in hints:
        try:
            alternative = np.asarray(make_alternative(), dtype=np.float64)
            if alternative.shape == got.shape and np.allclose(got64, alternative, rtol=rtol,
                                                              atol=atol):
                return f"{message}. Hint: {text}"
        except Exception:
            continue
    return message
