"""What a driver may use: the contract between a learner's object and the grader.

A *driver* (`Exercise.run(obj, inputs) -> plain data`) runs inside the learner's process, so it
lives in `bncourse.grading.drivers.lNN_<topic>` and imports only NumPy, torch, the standard library
and this module: never a reference implementation, an input generator or an expected result.
Results cross the process boundary as JSON with arrays as `.npy` bytes (`encode`/`decode`):
never pickle, so nothing a learner's process sends can run code in the grader.
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np

__all__ = ["SubmissionError", "as_array", "unpack", "encode", "decode", "roundtrip",
           "MAX_ARRAY_BYTES"]

# Largest array a learner's process may send back (bytes); results here are a few kilobytes.
MAX_ARRAY_BYTES = 16 * 2**20


class SubmissionError(Exception):
    """The learner's object broke the exercise's contract (wrong return type, arity, class...)."""


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} with shape {tuple(shape)}"
    return type(value).__name__


def as_array(value, what: str) -> np.ndarray:
    """The learner's value as a NumPy array (torch tensors detached), or SubmissionError."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if value is None:
        raise SubmissionError(f"{what} is None: did you forget a `return`?")
    try:
        array = np.array(value)
    except Exception as exc:  # an object numpy cannot read
        raise SubmissionError(f"{what} is not an array: {_describe(value)} ({exc})") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise SubmissionError(f"{what} must be an array of numbers, got {_describe(value)}")
    return array


def unpack(value, names: tuple[str, ...], function: str) -> tuple:
    """Check that `function` returned a tuple of len(names) values."""
    wanted = "(" + ", ".join(names) + ")"
    if not isinstance(value, (tuple, list)) or len(value) != len(names):
        raise SubmissionError(f"{function} must return a tuple {wanted}, got {_describe(value)}")
    return tuple(value)


# --- transport: JSON with arrays as .npy bytes, never pickle ------------------------------

def encode(value, depth: int = 0):
    """Plain data -> JSON-ready data; arrays become {"__ndarray__": base64 .npy bytes}."""
    if depth > 8:
        raise SubmissionError("result nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise SubmissionError("result is an array of Python objects, not numbers")
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return {"__ndarray__": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v, depth + 1) for k, v in value.items()}
    raise SubmissionError(f"cannot send a {type(value).__name__} back to the grader")


def decode(value, depth: int = 0):
    """Inverse of `encode`, defensive: anything unexpected raises ValueError."""
    if depth > 10:
        raise ValueError("result nested too deeply")
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            raw = base64.b64decode(value["__ndarray__"], validate=True)
            if len(raw) > MAX_ARRAY_BYTES:
                raise ValueError("array in result too large")
            array = np.load(io.BytesIO(raw), allow_pickle=False)
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise ValueError(f"array of dtype {array.dtype} in result")
            return array
        return {str(k): decode(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"unexpected {type(value).__name__} in result")


def roundtrip(result: dict) -> dict:
    """encode -> JSON -> decode: what the grader would receive from a child process."""
    return decode(json.loads(json.dumps(encode(result))))
