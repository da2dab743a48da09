"""Call a learner's object for one check: time limit, recorded forbidden calls, outcome as data.

Used in two places: in the learner's own kernel by `bncourse.check` (feedback), and in the
grader's child process by `bncourse grade` (see `sandbox.py`). Either way the outcome is a
plain dict: `{"status": ..., "message": ..., "result": ..., "calls": [...]}` with status one of
"ok", "not_implemented", "error", "timeout", "missing".
"""
from __future__ import annotations

import importlib
import signal
import threading
from contextlib import contextmanager

from bncourse.grading.checks import Exercise, SubmissionError

__all__ = ["CheckTimeout", "Recorder", "run_task", "time_limit", "describe_exception"]


class CheckTimeout(BaseException):
    """Raised inside learner code when a check runs out of time (BaseException: `except
    Exception` in learner code does not swallow it)."""


@contextmanager
def time_limit(seconds: float | None):
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


def _resolve(dotted: str):
    """(owner, attribute) for a dotted name, importing modules as needed; None if absent."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
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
        self.calls: list[str] = []
        self._recording = False
        self._originals = {}

    def _wrap(self, name, function):
        recorder = self

        def wrapper(*args, **kwargs):
            if recorder._recording and name not in recorder.calls:
                recorder.calls.append(name)
            return function(*args, **kwargs)

        wrapper.__name__ = getattr(function, "__name__", "wrapper")
        wrapper.__qualname__ = getattr(function, "__qualname__", wrapper.__name__)
        wrapper.__doc__ = getattr(function, "__doc__", None)
        wrapper.__wrapped__ = function
        return wrapper

    def install(self) -> None:
        for name in self.names:
            found = _resolve(name)
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


def describe_exception(exc: BaseException) -> str:
    """`TypeName: message`, one line, at most 300 characters (no addresses from reprs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def run_task(exercise: Exercise, obj, inputs: dict, timeout: float | None,
             recorder: Recorder | None = None) -> dict:
    """Run `exercise.run(obj, inputs)` under a time limit; never raises (but
    KeyboardInterrupt)."""
    outcome = {"status": "ok", "message": "", "result": None, "calls": []}
    if obj is None:
        outcome.update(status="missing",
                       message=f"`{exercise.name}` is not defined: run its cell first")
        return outcome
    if exercise.kind == "class" and not isinstance(obj, type):
        outcome.update(status="error", message=f"`{exercise.name}` must be a class, "
                       f"got {type(obj).__name__}")
        return outcome
    if exercise.kind == "function" and (isinstance(obj, type) or not callable(obj)):
        outcome.update(status="error", message=f"`{exercise.name}` must be a function, "
                       f"got {type(obj).__name__}")
        return outcome
    try:
        with time_limit(timeout):
            if recorder is not None:
                with recorder.recording():
                    outcome["result"] = exercise.run(obj, inputs)
                outcome["calls"] = list(recorder.calls)
            else:
                outcome["result"] = exercise.run(obj, inputs)
    except CheckTimeout:
        outcome.update(status="timeout", message=f"stopped after {timeout:g} s: an infinite "
                       "loop? (time limit per check)")
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
    if outcome["status"] != "ok":
        outcome["result"] = None
    if recorder is not None and not outcome["calls"]:
        outcome["calls"] = list(recorder.calls)
    return outcome
