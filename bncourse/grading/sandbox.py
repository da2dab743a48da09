"""Run a learner's notebook code in a child process and collect its answers to the checks.

The grader (parent) starts `python -I -m bncourse.grading.sandbox JOB FD` in a fresh temporary
folder holding a *copy* of the notebook. The child

1. limits itself (`resource.setrlimit`: address space, CPU seconds, file size, no core dumps),
2. wraps the functions an exercise may not call (so calls made later are recorded),
3. executes the notebook's code cells (each under a time limit; errors are reported, not fatal),
4. for each task, calls the learner's object through the exercise's driver on inputs made by
   the grader, and writes one JSON line per event to the pipe FD.

The parent enforces a wall-clock limit per cell and per check, kills the whole process group
when one is exceeded, caps what it reads, and restarts a child after a crash to go on with the
next task. It unpickles nothing the child sends: results are JSON with `.npy` arrays.
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SandboxLimits", "SandboxOutcome", "run_notebook"]

# Environment variables the learner's process never sees (an instructor's signing key).
SECRET_ENV = ("BNCOURSE_CERT_KEY",)
MAX_LINE_BYTES = 64 * 2**20
STARTUP_SECONDS = 60.0  # python + numpy + torch imports, on a busy machine


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 20.0  # wall seconds per notebook cell and per check
    memory_mb: int = 4096  # address space of the learner's process
    output_bytes: int = 1 * 2**20  # what the learner's code may print (the rest is dropped)
    file_bytes: int = 64 * 2**20  # largest file the learner's code may write
    max_restarts: int = 12


@dataclass
class SandboxOutcome:
    """What came back: per task the runner's outcome dict (None if the child died during it),
    per cell an error message or None, and notes on crashes and restarts."""

    task_outcomes: list = field(default_factory=list)
    cell_errors: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    restarts: int = 0
    notebook_copy_changed: bool = False


# --- the child --------------------------------------------------------------------------

class _CappedWriter:
    """sys.stdout/stderr for learner code: passes the first `cap` bytes on, drops the rest."""

    def __init__(self, stream, cap):
        self._stream, self._left = stream, cap
        self.encoding = "utf-8"

    def write(self, text):
        text = str(text)
        if self._left > 0:
            chunk = text[: self._left]
            self._left -= len(chunk)
            try:
                self._stream.write(chunk)
            except Exception:
                pass
        return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except Exception:
            pass

    def isatty(self):
        return False


def _set_limits(job):
    import resource

    def limit(kind, soft):
        try:
            _, hard = resource.getrlimit(kind)
            soft = int(soft) if hard == resource.RLIM_INFINITY else min(int(soft), hard)
            resource.setrlimit(kind, (soft, hard if hard != resource.RLIM_INFINITY else soft))
        except (ValueError, OSError):
            pass

    limit(resource.RLIMIT_AS, job["memory_mb"] * 2**20)
    limit(resource.RLIMIT_CPU, job["cpu_seconds"])
    limit(resource.RLIMIT_FSIZE, job["file_bytes"])
    limit(resource.RLIMIT_CORE, 0)


def _child_main(job_path: str, fd: int) -> None:
    with open(job_path, "rb") as f:
        job = pickle.load(f)  # written by the grader before this process started
    os.unlink(job_path)
    pipe = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def send(**event):
        pipe.write(json.dumps(event) + "\n")
        pipe.flush()

    _set_limits(job)
    sys.stdout = _CappedWriter(sys.__stdout__, job["output_bytes"])
    sys.stderr = _CappedWriter(sys.__stderr__, job["output_bytes"])

    import numpy  # noqa: F401  (import once, before learner code, as the notebooks do)
    import torch  # noqa: F401

    import bncourse
    from bncourse.grading import registry
    from bncourse.grading.checks import SubmissionError, encode
    from bncourse.grading.runner import Recorder, describe_exception, run_task, time_limit

    forbidden = [name for ex in registry.EXERCISES.values() for name in ex.forbidden]
    recorder = Recorder(forbidden)
    recorder.install()
    bncourse.check = lambda *args, **kwargs: None  # feedback is for the notebook, not here
    try:
        import matplotlib

        matplotlib.use("Agg")
    except Exception:
        pass
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    send(event="ready")
    for index, source in job["cells"]:
        send(event="cell", index=index)
        error = None
        try:
            code = compile(source, f"<cell {index}>", "exec")
            with time_limit(job["timeout"]):
                exec(code, namespace)
        except SyntaxError as exc:
            error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
        except BaseException as exc:  # a failing cell is reported; grading goes on
            error = describe_exception(exc)
            if type(exc).__name__ == "CheckTimeout":
                error = f"stopped after {job['timeout']:g} s (time limit per cell)"
        send(event="cell_done", index=index, error=error)
    for task in job["tasks"]:
        exercise = registry.get(task["exercise"])
        send(event="start", task=task["task"])
        obj = namespace.get(exercise.name)
        outcome = run_task(exercise, obj, task["inputs"], job["timeout"], recorder)
        if outcome["status"] == "ok":
            try:
                outcome["result"] = encode(outcome["result"])
            except SubmissionError as exc:
                outcome.update(status="error", message=str(exc), result=None)
        send(event="done", task=task["task"], outcome=outcome)
    send(event="end")
    pipe.close()
    os._exit(0)  # skip interpreter shutdown: learner threads or atexit hooks cannot delay it


# --- the parent -------------------------------------------------------------------------

def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    return env


def _run_child(workdir: Path, notebook_name: str, cells, tasks, limits: SandboxLimits, on_event):
    """Start one child; feed its events to `on_event(event)`. Returns (how it ended, detail):
    ("end", None), ("timeout", unit), ("crash", returncode) or ("protocol", message)."""
    job_path = workdir / "job.pkl"
    units = len(cells) + len(tasks)
    job = {"cells": cells, "tasks": tasks, "timeout": limits.timeout,
           "memory_mb": limits.memory_mb, "output_bytes": limits.output_bytes,
           "file_bytes": limits.file_bytes,
           "cpu_seconds": STARTUP_SECONDS + limits.timeout * (units + 1)}
    with open(job_path, "wb") as f:
        pickle.dump(job, f)
    read_fd, write_fd = os.pipe()
    log = open(workdir / "output.log", "wb")
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-m", "bncourse.grading.sandbox", str(job_path),
             str(write_fd)],
            cwd=workdir / "notebook", stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True,
            env=_child_env())
    finally:
        os.close(write_fd)
        log.close()
    buffer = b""
    deadline = time.monotonic() + STARTUP_SECONDS
    ended = None
    try:
        while ended is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ended = ("timeout", None)
                break
            ready, _, _ = select.select([read_fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:  # the child closed the pipe: it ended or died
                ended = None
                break
            buffer += chunk
            if len(buffer) > MAX_LINE_BYTES:
                ended = ("protocol", "the learner's process sent too much data")
                break
            while b"\n" in buffer and ended is None:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError("not an object")
                except ValueError:
                    ended = ("protocol", "unreadable message from the learner's process")
                    break
                deadline = time.monotonic() + limits.timeout + 1.5
                if event.get("event") == "end":
                    ended = ("end", None)
                elif on_event(event) is False:
                    ended = ("protocol", "unexpected message from the learner's process")
        if ended is None:
            try:
                returncode = child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                returncode = None
            ended = ("crash", returncode)
    finally:
        os.close(read_fd)
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    return ended


def run_notebook(notebook_bytes: bytes, notebook_name: str, cells, tasks,
                 limits: SandboxLimits = SandboxLimits()) -> SandboxOutcome:
    """Execute `cells` [(index, source)] of a copy of the notebook in a child process, then
    run `tasks` [{"task": i, "exercise": id, "inputs": dict}]; restart after a crash."""
    outcome = SandboxOutcome(task_outcomes=[None] * len(tasks))
    workdir = Path(tempfile.mkdtemp(prefix="bncourse-grade-"))
    try:
        (workdir / "notebook").mkdir()
        copy = workdir / "notebook" / Path(notebook_name).name
        copy.write_bytes(notebook_bytes)
        # A fresh child re-runs every cell (its namespace starts empty) but the ones that
        # killed or hung an earlier child, then the tasks not done yet.
        skip_cells, remaining_tasks = set(), list(tasks)
        task_ids = {t["task"] for t in tasks}
        while remaining_tasks:
            state = {"cell": None, "task": None}

            def on_event(event):
                kind = event.get("event")
                if kind == "cell" and isinstance(event.get("index"), int):
                    state["cell"] = event["index"]
                elif kind == "cell_done" and event.get("index") == state["cell"]:
                    if event.get("error"):
                        outcome.cell_errors[state["cell"]] = str(event["error"])[:400]
                    state["cell"] = None
                elif kind == "start" and event.get("task") in task_ids:
                    state["task"] = event["task"]
                elif kind == "done" and event.get("task") == state["task"]:
                    result = event.get("outcome")
                    outcome.task_outcomes[state["task"]] = result if isinstance(result, dict) \
                        else {"status": "error", "message": "malformed result"}
                    remaining_tasks[:] = [t for t in remaining_tasks if t["task"] != state["task"]]
                    state["task"] = None
                elif kind not in ("ready",):
                    return False
                return True

            run_cells = [c for c in cells if c[0] not in skip_cells]
            how, detail = _run_child(workdir, notebook_name, run_cells, remaining_tasks,
                                     limits, on_event)
            if how == "end":
                break
            if how == "timeout":
                reason = f"stopped after {limits.timeout:g} s and killed (time limit)"
            elif how == "crash":
                reason = ("the process running your code was killed by "
                          f"{_signal_name(detail)}" if detail is not None and detail < 0
                          else f"the process running your code exited (status {detail})")
                if detail is not None and detail < 0 and -detail == signal.SIGXCPU:
                    reason += " (CPU time limit)"
                elif detail is not None and detail < 0 and -detail == signal.SIGSEGV:
                    reason += " (a crash: deep recursion?)"
            else:
                reason = str(detail)
            # Blame the unit that was running, drop it, start a fresh child for the rest.
            if state["cell"] is not None:
                outcome.cell_errors[state["cell"]] = reason
                skip_cells.add(state["cell"])
            elif state["task"] is not None:
                outcome.task_outcomes[state["task"]] = {"status": "error", "message": reason}
                hung = next(t for t in tasks if t["task"] == state["task"])
                remaining_tasks[:] = [t for t in remaining_tasks if t["task"] != state["task"]]
                if how == "timeout":
                    # Code that ignores the time limit would hang the next check of the same
                    # exercise too: skip them rather than wait for each.
                    for t in [t for t in remaining_tasks if t["exercise"] == hung["exercise"]]:
                        outcome.task_outcomes[t["task"]] = {
                            "status": "error",
                            "message": f"skipped: an earlier check of {hung['exercise']} was "
                                       f"{reason}"}
                        remaining_tasks.remove(t)
            else:  # died before or between units (start-up): nothing to blame, stop
                outcome.notes.append(f"the grading process failed to start: {reason}")
                break
            outcome.restarts += 1
            if outcome.restarts > limits.max_restarts:
                outcome.notes.append("too many crashes: the remaining checks were not run")
                break
        outcome.notebook_copy_changed = copy.read_bytes() != notebook_bytes \
            if copy.exists() else True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


if __name__ == "__main__":
    _child_main(sys.argv[1], int(sys.argv[2]))
