"""What a driver may use: the contract between a learner's object and the grader.

A *driver* (`Exercise.run(obj, inputs) -> plain data`) runs inside the learner's process, so it
lives in `bncourse.grading.drivers.lNN_<topic>` and imports only NumPy, torch, the standard library
and this module: never a reference implementation, an input generator or an expected result.
Results cross the process boundary as JSON with arrays as `.npy` bytes (`encode`/`decode`):
never pickle, so nothing a learner's process sends can run code in the grader.
"""
from __future__ import annotations

import base64
import importlib
import io
import json
import signal
import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["SubmissionError", "SealedCall", "as_array", "unpack", "encode", "decode",
           "roundtrip", "tensor_attribute", "CheckTimeout", "time_limit", "describe_exception",
           "Recorder", "resolve", "call_driver", "MAX_ARRAY_BYTES"]

# Largest array a learner's process may send back (bytes); results here are a few kilobytes.
MAX_ARRAY_BYTES = 16 * 2**20


class SubmissionError(Exception):
    """The learner's object broke the exercise's contract (wrong return type, arity, class...)."""


class SealedCall(BaseException):
    """Raised in a sealed grading process when learner code reaches something the exercise asks
    to write (torch's batch-norm kernels). BaseException: `except Exception` does not hide it."""


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


def tensor_attribute(module, name):
    """`module.<name>` when it is a tensor (a parameter or buffer the exercise asks for), else
    SubmissionError naming it."""
    import torch

    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise SubmissionError(f"the module has no tensor attribute `{name}` (got "
                              f"{type(value).__name__})")
    return value


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


# --- calling a learner's object: time limit, recorded calls, outcome as data -----------------

class CheckTimeout(BaseException):
    """Raised inside learner code when a check runs out of time (BaseException: `except
    Exception` in learner code does not swallow it)."""


@contextmanager
def time_limit(seconds):
    """Raise CheckTimeout in the main thread after `seconds` (then every 0.25 s, in case the
    learner's code catches it). A no-op off the main thread or without SIGALRM."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return
    state = {"active": True}

    def on_alarm(signum, frame):
        if state["active"]:
            raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)
    try:
        yield
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def describe_exception(exc: BaseException) -> str:
    """`TypeName: message`, one line, at most 300 characters (no addresses from reprs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def resolve(dotted: str):
    """(owner, attribute) for a dotted name, importing modules as needed; None if absent (or
    not importable here: a sealed grading process blocks the course's own BN code)."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except (ImportError, OSError):
            continue
        for part in parts[split:-1]:
            owner = getattr(owner, part, None)
            if owner is None:
                return None
        if hasattr(owner, parts[-1]):
            return owner, parts[-1]
        return None
    return None


class Recorder:
    """Wraps functions by dotted name so that calls made while `recording()` are noted.

    `install()` replaces the attributes for good (the grader's child process, before any
    learner code runs, so `from torch.nn.functional import batch_norm` gets the wrapper);
    `patched()` replaces them only for the duration of a `with` block (feedback in a kernel).
    """

    def __init__(self, names):
        self.names = tuple(dict.fromkeys(names))
        self.calls: list = []
        self._recording = False
        self._originals = {}

    def note(self, name):
        if self._recording and name not in self.calls:
            self.calls.append(name)

    def _wrap(self, name, function):
        recorder = self

        def wrapper(*args, **kwargs):
            recorder.note(name)
            return function(*args, **kwargs)

        wrapper.__name__ = getattr(function, "__name__", "wrapper")
        wrapper.__qualname__ = getattr(function, "__qualname__", wrapper.__name__)
        wrapper.__doc__ = getattr(function, "__doc__", None)
        wrapper.__wrapped__ = function
        return wrapper

    def install(self) -> None:
        for name in self.names:
            found = resolve(name)
            if found is None or name in self._originals:
                continue
            owner, attribute = found
            original = getattr(owner, attribute)
            self._originals[name] = (owner, attribute, original)
            setattr(owner, attribute, self._wrap(name, original))

    def uninstall(self) -> None:
        for owner, attribute, original in self._originals.values():
            setattr(owner, attribute, original)
        self._originals.clear()

    @contextmanager
    def patched(self):
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    @contextmanager
    def recording(self):
        self.calls = []
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False


def call_driver(run, obj, name: str, kind: str, inputs: dict, timeout, recorder=None) -> dict:
    """`run(obj, inputs)` under a time limit, as an outcome dict `{"status", "message",
    "result", "calls"}` (status "ok", "not_implemented", "error", "timeout", "missing",
    "sealed"); never raises (but KeyboardInterrupt)."""
    outcome = {"status": "ok", "message": "", "result": None, "calls": []}
    if obj is None:
        outcome.update(status="missing", message=f"`{name}` is not defined: run its cell first")
        return outcome
    if kind == "class" and not isinstance(obj, type):
        outcome.update(status="error", message=f"`{name}` must be a class, "
                       f"got {type(obj).__name__}")
        return outcome
    if kind == "function" and (isinstance(obj, type) or not callable(obj)):
        outcome.update(status="error", message=f"`{name}` must be a function, "
                       f"got {type(obj).__name__}")
        return outcome
    try:
        with time_limit(timeout):
            if recorder is not None:
                with recorder.recording():
                    outcome["result"] = run(obj, inputs)
                outcome["calls"] = list(recorder.calls)
            else:
                outcome["result"] = run(obj, inputs)
    except CheckTimeout:
        outcome.update(status="timeout", message=f"stopped after {timeout:g} s: an infinite "
                       "loop? (time limit per check)")
    except SealedCall as exc:
        outcome.update(status="sealed", message=f"flagged: {exc}; this exercise asks you to "
                       "write it yourself (0 points for this check)")
    except NotImplementedError:
        outcome.update(status="not_implemented", message="not implemented yet")
    except SubmissionError as exc:
        outcome.update(status="error", message=str(exc))
    except RecursionError:
        outcome.update(status="error", message="RecursionError: maximum recursion depth "
                       "exceeded (a function calling itself without end?)")
    except MemoryError:
        outcome.update(status="error", message="MemoryError: ran out of memory "
                       "(allocating a huge array?)")
    except SystemExit as exc:
        outcome.update(status="error", message=f"called sys.exit({exc.code!r}): "
                       "a graded function must return, not exit")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # learner code may raise anything
        outcome.update(status="error", message=describe_exception(exc))
    if recorder is not None and not outcome["calls"]:
        outcome["calls"] = list(recorder.calls)
    sealed = [c for c in outcome["calls"] if isinstance(c, str) and c.startswith("sealed:")]
    if sealed and outcome["status"] in ("ok", "error"):  # a sealed call caught by learner code
        outcome.update(status="sealed", message=f"flagged: {sealed[0][7:]}; this exercise asks "
                       "you to write it yourself (0 points for this check)")
    if outcome["status"] != "ok":
        outcome["result"] = None
    return outcome
