"""Run a learner's notebook code in a confined child process and collect its answers.

The grader (parent) starts `python -I .../drivers/_child.py IN_FD OUT_FD` in a fresh scratch
folder holding a *copy* of the notebook, with a minimal environment (no secrets in its argv or
environment). The protocol, over two pipes, one JSON object a line:

    parent -> child   the job: cells, limits, what to confine and block (no check inputs)
    child -> parent   ready(protections); cell(i), cell_done(i, error) for each cell; cells_done
    parent -> child   request(k, nonce, driver, inputs)          only after cells_done
    child -> parent   answer(k, nonce, outcome)                  exactly one per request

Anything else (a message before its turn, an extra or reordered one, a wrong nonce) is a
protocol error: every check of the notebook scores zero. The child confines itself before it
imports torch or runs a cell (`confine.py`: Landlock, seccomp, rlimits), so it can write only
in the scratch folder, read nothing of the grader's but the drivers, open no network connection
and start no process. Exercises that implement batch norm run in a *sealed* child: the course's
BN code cannot be imported or read, and torch's batch-norm kernels raise "uses torch's batch
norm". Exercises of other kinds run in a second child, so a module may start two (side by
side).

The parent enforces a wall-clock limit per cell and per check, kills the whole process group
when one is exceeded, caps what it reads, and restarts a child after a crash to go on with the
next task. It unpickles nothing the child sends: results are JSON with `.npy` arrays.
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["SandboxLimits", "SandboxOutcome", "run_notebook", "child_mode"]

# Environment variables the learner's process never sees (an instructor's signing key). The
# child's environment is built from scratch (`_child_env`): nothing else is passed either.
SECRET_ENV = ("BNCOURSE_CERT_KEY",)
MAX_LINE_BYTES = 64 * 2**20
STARTUP_SECONDS = 60.0  # python + numpy + torch imports, on a busy machine
GRACE_SECONDS = 1.5  # beyond the child's own time limit, before the parent kills it
CHILD = Path(__file__).resolve().parent / "drivers" / "_child.py"
PACKAGE = Path(__file__).resolve().parents[1]  # the bncourse package folder


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 20.0  # wall seconds per notebook cell and per check
    check_budget: float = 45.0  # wall seconds for all checks of a notebook (a hang in each)
    memory_mb: int = 4096  # address space of the learner's process
    output_bytes: int = 1 * 2**20  # what the learner's code may print (the rest is dropped)
    file_bytes: int = 64 * 2**20  # largest file the learner's code may write
    max_restarts: int = 12
    processes: int = 16  # RLIMIT_NPROC (root ignores it: seccomp stops new processes anyway)
    landlock: bool = True  # use what the machine offers (False: for tests of the fallback)
    seccomp: bool = True


@dataclass
class SandboxOutcome:
    """What came back: per task the runner's outcome dict (None if the child died during it),
    per cell an error message or None, notes on crashes and restarts, the protections that were
    in force (per child mode) and a protocol error, if any (then every check scores zero)."""

    task_outcomes: list = field(default_factory=list)
    cell_errors: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    restarts: int = 0
    notebook_copy_changed: bool = False
    protections: dict = field(default_factory=dict)
    protocol_error: str | None = None
    budget: dict = field(default_factory=dict, repr=False)  # {"left": seconds} of check_budget


class _ProtocolError(Exception):
    pass


def child_mode(exercise) -> str:
    """"sealed" (implements BN: course BN code and torch's BN kernels out of reach), "layers"
    (lessons 06 on: may import bncourse.nn, models, ...) or "plain"."""
    if getattr(exercise, "implements_bn", False):
        return "sealed"
    if getattr(exercise, "uses_course_layers", False):
        return "layers"
    return "plain"


def _visible(*relative):
    return [str(PACKAGE / r) for r in relative if (PACKAGE / r).exists()]


def _mode_job(mode: str, drivers) -> dict:
    """What a child of this mode may import and read."""
    lessons = any(not d.startswith("bncourse.grading.drivers.") for d in drivers)
    core = ["__init__.py", "_version.py", "environment.py", "data", "gradcheck.py",
            "grading/__init__.py", "grading/drivers", "grading/confine.py"]
    if mode in ("sealed", "plain"):
        # sealed: also scipy.stats (zscore standardises a batch in one call). Not sklearn:
        # `bncourse.data` loads the digits with it, and drivers train on them (modules 04, 12).
        others = ["scipy.stats"] if mode == "sealed" else []
        return {"blocked": ["bncourse"] + others,
                "allowed": ["bncourse", "bncourse._version", "bncourse.environment",
                            "bncourse.data.*", "bncourse.gradcheck", "bncourse.grading",
                            "bncourse.grading.drivers.*"],
                "hidden": [str(PACKAGE)], "visible": _visible(*core),
                "seal_torch": mode == "sealed", "lessons_allowed": False}
    # layers: the course's library is the learner's to use; the grader's files are not.
    allowed = ["bncourse.grading", "bncourse.grading.drivers.*"]
    visible = _visible("grading/__init__.py", "grading/drivers", "grading/confine.py")
    if lessons:  # drivers not yet moved out of their lesson file
        allowed += ["bncourse.grading.lessons.*", "bncourse.grading.checks"]
        visible += _visible("grading/lessons", "grading/checks.py")
    return {"blocked": ["bncourse.grading"], "allowed": allowed, "extra_roots": [str(PACKAGE)],
            "hidden": [str(PACKAGE / "grading")], "visible": visible,
            "seal_torch": False, "lessons_allowed": lessons}


@lru_cache(maxsize=1)
def _child_sys_path() -> tuple:
    """sys.path of `python -I` (what the child imports from), asked once."""
    try:
        out = subprocess.run([sys.executable, "-I", "-c", "import sys, json; "
                              "print(json.dumps(sys.path))"], capture_output=True, text=True,
                             timeout=30, env=_child_env(Path(tempfile.gettempdir())))
        return tuple(p for p in json.loads(out.stdout) if p)
    except Exception:
        return tuple(p for p in sys.path if p)


def _read_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *(v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib",
                                                                   "purelib", "platlib")),
             *_child_sys_path(),
             "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/fonts", "/usr/share/zoneinfo",
             "/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group",
             "/etc/nsswitch.conf", "/etc/fonts", "/proc/self", "/proc/thread-self",
             "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/sys/devices/system/cpu",
             "/sys/fs/cgroup/cpu.max"}
    return sorted(r for r in roots if r and os.path.exists(r))


def _child_env(scratch: Path) -> dict:
    """A fresh environment: nothing of the grader's (no key, no token) reaches learner code."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
           if k in os.environ}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONHASHSEED="0", HOME=str(scratch), TMPDIR=str(scratch),
               MPLCONFIGDIR=str(scratch / ".mpl"), XDG_CACHE_HOME=str(scratch / ".cache"))
    return env


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class _Conversation:
    """The parent's side of one child's protocol (see the module docstring)."""

    def __init__(self, cells, tasks, on_cell_done, on_answer, on_ready):
        self.order = [index for index, _ in cells]
        self.tasks = list(tasks)
        self.on_cell_done, self.on_answer, self.on_ready = on_cell_done, on_answer, on_ready
        self.phase, self.position, self.cell, self.pending = "ready", 0, None, None
        self.sent_at = None

    def receive(self, event) -> None:
        kind = event.get("event")
        if self.phase == "ready" and kind == "ready":
            self.on_ready(event.get("protections"))
            self.phase = "cells"
        elif self.phase == "cells" and kind == "cell" and self.cell is None \
                and self.position < len(self.order) and event.get("index") == self.order[self.position]:
            self.cell = self.order[self.position]
        elif self.phase == "cells" and kind == "cell_done" and self.cell is not None \
                and event.get("index") == self.cell:
            self.on_cell_done(self.cell, event.get("error"))
            self.cell, self.position = None, self.position + 1
        elif self.phase == "cells" and kind == "cells_done" and self.cell is None \
                and self.position == len(self.order):
            self.phase = "tasks"
        elif self.phase == "tasks" and kind == "answer" and self.pending is not None \
                and event.get("request") == self.pending[0]["task"] \
                and event.get("nonce") == self.pending[1]:
            task, self.pending = self.pending[0], None
            self.on_answer(task, event.get("outcome"))
        else:
            where = {"ready": "before the process was ready", "cells": "while the cells ran",
                     "tasks": "while a check ran" if self.pending else "after the checks"}
            raise _ProtocolError(f"a message out of turn ({str(kind)[:30]!r} {where[self.phase]})")

    def next_request(self, skip) -> dict | None:
        """The next request to send (None: the end), once cells are done and no answer is due."""
        while self.tasks and self.tasks[0]["task"] in skip:
            self.tasks.pop(0)
        if not self.tasks:
            return None
        task = self.tasks.pop(0)
        self.pending = (task, secrets.token_hex(16))
        self.sent_at = time.monotonic()
        return task


def _run_child(workdir: Path, mode: str, cells, tasks, limits: SandboxLimits, outcome,
               state, skip) -> tuple:
    """Start one child of `mode`; run `cells`, then `tasks` one request at a time. Returns (how
    it ended, detail): ("end", None), ("timeout", None), ("crash", returncode) or
    ("protocol", message). `state` says which cell or task was running."""
    from bncourse.grading import registry

    drivers = sorted({registry.get(t["exercise"]).run.__module__ for t in tasks})
    forbidden = sorted({n for t in tasks for n in registry.get(t["exercise"]).forbidden})
    units = len(cells) + len(tasks)
    job = {"cells": cells, "timeout": limits.timeout, "memory_mb": limits.memory_mb,
           "output_bytes": limits.output_bytes, "file_bytes": limits.file_bytes,
           "cpu_seconds": int(STARTUP_SECONDS + limits.timeout * (units + 1)),
           "processes": limits.processes, "landlock": limits.landlock,
           "seccomp": limits.seccomp,
           "write_roots": [str(workdir)], "drivers": drivers, "forbidden": forbidden,
           **_mode_job(mode, drivers)}
    job["read_roots"] = _read_roots() + job.pop("extra_roots", [])
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    log = open(workdir / "output.log", "ab")
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", str(CHILD), str(to_child_r), str(from_child_w)],
            cwd=workdir / "notebook", stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, pass_fds=(to_child_r, from_child_w),
            start_new_session=True, env=_child_env(workdir))
    finally:
        os.close(to_child_r)
        os.close(from_child_w)
        log.close()
    writer = os.fdopen(to_child_w, "wb")

    def write(message):
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            writer.flush()
        except (BrokenPipeError, OSError):
            pass  # the child died: reading its pipe says so

    def on_cell_done(index, error):
        if error:
            outcome.cell_errors.setdefault(index, str(error)[:400])

    def on_answer(task, result):
        outcome.budget["left"] -= time.monotonic() - conversation.sent_at
        outcome.task_outcomes[task["task"]] = result if isinstance(result, dict) \
            else {"status": "error", "message": "malformed result"}
        state["done"].add(task["task"])
        if isinstance(result, dict) and result.get("status") == "timeout":
            # Code that runs out of time once would in the next checks too: skip them.
            for t in conversation.tasks:
                if t["exercise"] == task["exercise"] and t["task"] not in skip:
                    skip.add(t["task"])
                    outcome.task_outcomes[t["task"]] = {
                        "status": "error", "message": f"skipped: an earlier check of "
                        f"{task['exercise']} stopped after {limits.timeout:g} s (time limit)"}

    def on_ready(protections):
        if isinstance(protections, dict):
            outcome.protections[mode] = {str(k): v for k, v in protections.items()
                                         if isinstance(v, (bool, str))}

    conversation = _Conversation(cells, tasks, on_cell_done, on_answer, on_ready)
    write(job)
    buffer, ended = b"", None
    deadline = time.monotonic() + STARTUP_SECONDS
    finishing = False  # the end was sent: only end-of-file may follow
    try:
        while ended is None:
            state["cell"], state["task"] = conversation.cell, \
                (conversation.pending[0]["task"] if conversation.pending else None)
            state["sent_at"] = conversation.sent_at if conversation.pending else None
            if conversation.phase == "tasks" and conversation.pending is None and not finishing:
                if outcome.budget["left"] < 0.5 and conversation.tasks:  # out of budget
                    for t in conversation.tasks:
                        if t["task"] not in skip:
                            skip.add(t["task"])
                            outcome.task_outcomes[t["task"]] = {
                                "status": "error", "message": "skipped: the checks of this "
                                f"notebook used up their {limits.check_budget:g} s"}
                task = conversation.next_request(skip)
                if task is None:
                    write({"request": None})
                    finishing = True
                    deadline = time.monotonic() + 5
                else:
                    exercise = registry.get(task["exercise"])
                    check = exercise.checks[task.get("check", 0)]
                    # A check that declares a longer limit gets it; others share the budget.
                    seconds = round(max(0.5, check.timeout if check.timeout else
                                        min(limits.timeout, outcome.budget["left"])), 1)
                    write({"request": task["task"], "nonce": conversation.pending[1],
                           "timeout": seconds,
                           "driver": f"{exercise.run.__module__}:{exercise.run.__name__}",
                           "name": exercise.name, "kind": exercise.kind,
                           "inputs": base64.b64encode(pickle.dumps(task["inputs"])).decode()})
                    deadline = time.monotonic() + seconds + GRACE_SECONDS
                state["task"] = conversation.pending[0]["task"] if conversation.pending else None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ended = ("end", None) if finishing else ("timeout", None)
                break
            ready, _, _ = select.select([from_child_r], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(from_child_r, 1 << 20)
            if not chunk:  # the child closed the pipe: it ended or died
                break
            buffer += chunk
            if len(buffer) > MAX_LINE_BYTES:
                ended = ("protocol", "the learner's process sent too much data")
                break
            while b"\n" in buffer and ended is None:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict) or finishing:
                        raise _ProtocolError("a message after the last check"
                                             if finishing else "a message that is not an object")
                    was_ready = conversation.phase == "ready"
                    conversation.receive(event)
                except ValueError:
                    ended = ("protocol", "an unreadable message")
                    break
                except _ProtocolError as exc:
                    ended = ("protocol", str(exc))
                    break
                deadline = time.monotonic() + (STARTUP_SECONDS if was_ready
                                               else limits.timeout + GRACE_SECONDS)
                if conversation.pending is not None:  # a request is out: its own limit
                    deadline = conversation.sent_at + seconds + GRACE_SECONDS
        if ended is None:
            if finishing:
                ended = ("end", None)
            else:
                try:
                    returncode = child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    returncode = None
                ended = ("crash", returncode)
    finally:
        os.close(from_child_r)
        try:
            writer.close()
        except OSError:
            pass
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    return ended


def _run_mode(workdir, mode, cells, tasks, limits, outcome):
    """Run one mode's tasks, restarting the child after a crash; False after a protocol error."""
    skip_cells, remaining = set(), list(tasks)
    skip = set()
    while remaining:
        state = {"cell": None, "task": None, "done": set()}
        run_cells = [c for c in cells if c[0] not in skip_cells]
        how, detail = _run_child(workdir, mode, run_cells, remaining, limits, outcome, state,
                                 skip)
        remaining = [t for t in remaining if t["task"] not in state["done"]
                     and t["task"] not in skip]
        if how == "end":
            break
        if how == "protocol":
            outcome.protocol_error = f"protocol error: {detail}"
            return False
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
        # Blame the unit that was running, drop it, start a fresh child for the rest.
        if state["cell"] is not None:
            outcome.cell_errors[state["cell"]] = reason
            skip_cells.add(state["cell"])
        elif state["task"] is not None:
            if state.get("sent_at") is not None:
                outcome.budget["left"] -= time.monotonic() - state["sent_at"]
            outcome.task_outcomes[state["task"]] = {"status": "error", "message": reason}
            hung = next(t for t in tasks if t["task"] == state["task"])
            remaining = [t for t in remaining if t["task"] != state["task"]]
            if how == "timeout":
                # Code that ignores the time limit would hang the next check of the same
                # exercise too: skip them rather than wait for each.
                for t in [t for t in remaining if t["exercise"] == hung["exercise"]]:
                    outcome.task_outcomes[t["task"]] = {
                        "status": "error",
                        "message": f"skipped: an earlier check of {hung['exercise']} was "
                                   f"{reason}"}
                    remaining.remove(t)
        else:  # died before or between units (start-up): nothing to blame, stop
            outcome.notes.append(f"the grading process failed to start: {reason}")
            break
        outcome.restarts += 1
        if outcome.restarts > limits.max_restarts:
            outcome.notes.append("too many crashes: the remaining checks were not run")
            break
    return True


def run_notebook(notebook_bytes: bytes, notebook_name: str, cells, tasks,
                 limits: SandboxLimits = SandboxLimits()) -> SandboxOutcome:
    """Execute `cells` [(index, source)] of a copy of the notebook in a confined child process,
    then run `tasks` [{"task": i, "exercise": id, "inputs": dict}] one request at a time;
    restart after a crash. One child per mode (`child_mode`) the module's exercises need."""
    from bncourse.grading import registry

    outcome = SandboxOutcome(task_outcomes=[None] * len(tasks),
                             budget={"left": limits.check_budget})
    groups: dict[str, list] = {}
    seen: dict[str, int] = {}
    tasks = [dict(t) for t in tasks]
    for task in tasks:  # the k-th task of an exercise is its k-th check (grade.py's order)
        task.setdefault("check", seen.get(task["exercise"], 0))
        seen[task["exercise"]] = seen.get(task["exercise"], 0) + 1
        groups.setdefault(child_mode(registry.get(task["exercise"])), []).append(task)
    workdir = Path(tempfile.mkdtemp(prefix="bncourse-grade-"))
    try:
        (workdir / "notebook").mkdir()
        copy = workdir / "notebook" / Path(notebook_name).name
        copy.write_bytes(notebook_bytes)
        # The children of a module's modes run side by side (each its own process group);
        # they write to different task slots of `outcome`.
        with ThreadPoolExecutor(max_workers=len(groups) or 1) as pool:
            list(pool.map(lambda item: _run_mode(workdir, item[0], cells, item[1], limits,
                                                 outcome), groups.items()))
        if not copy.exists() or copy.read_bytes() != notebook_bytes:
            outcome.notebook_copy_changed = True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome.protocol_error:
        outcome.notes.append(f"{outcome.protocol_error}: every check scores 0")
        outcome.task_outcomes = [{"status": "error", "message": f"{outcome.protocol_error} "
                                  "(the learner's process wrote to the grader's channel)"}
                                 for _ in tasks]
    return outcome
