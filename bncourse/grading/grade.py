"""`bncourse grade PATH`: grade one exercise notebook or a folder of them.

For each notebook: read its bytes once (the SHA-256 and the grade refer to those bytes), find
its module, run its code and the module's checks in a child process (`sandbox.py`), and score
each check here, against the trusted reference. Learner files are only read, never written.

Bad input, one rule: what the learner handed in is reported as such and scores nothing; what
stops the grader itself is the grader's error.
- a notebook of another course (or of an ungraded lesson) given directly: `NotGradable`, a
  ValueError saying so (the command exits non-zero); inside a folder it is skipped, listed;
- a file that is not a readable notebook: "corrupted", given directly (ValueError) or in a
  folder (reported under its module, never skipped);
- a `--memory-mb` too small for python + NumPy + torch to start: `GraderError`, naming the
  limit, before any learner code runs (and if the grading process fails to start anyway).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bncourse._version import __version__
from bncourse.grading import registry
from bncourse.grading.checks import decode
from bncourse.grading.notebook import (NotebookError, code_cells, forbidden_uses,
                                       load_notebook, notebook_module)
from bncourse.grading.results import (CheckResult, ExerciseResult, clean_text, evaluate,
                                      make_inputs)
from bncourse.grading.sandbox import SandboxLimits, run_notebook

__all__ = ["NotebookReport", "GradeReport", "grade_notebook", "grade_path", "find_notebooks",
           "GRADER_VERSION", "GraderError", "NotGradable", "CORRUPTED", "check_limits",
           "default_workers"]

GRADER_VERSION = 1
CORRUPTED = "corrupted"


class GraderError(RuntimeError):
    """The grader itself cannot run (not the learner's fault): e.g. --memory-mb too small."""


class NotGradable(ValueError):
    """A notebook given directly that is not an exercise notebook of this course."""


_START_CHECKED: dict[int, str | None] = {}


def _grader_start_error(memory_mb: int) -> str | None:
    """Why python + NumPy + torch cannot start under an address-space limit of `memory_mb`
    (None: they can). Measured once per limit: about 2 s."""
    if memory_mb not in _START_CHECKED:
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

        try:
            done = subprocess.run([sys.executable, "-I", "-c",
                                   "import numpy, torch, bncourse.grading.checks"],
                                  preexec_fn=limit, capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
            tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            _START_CHECKED[memory_mb] = None if done.returncode == 0 else tail
        except (OSError, subprocess.TimeoutExpired) as exc:
            _START_CHECKED[memory_mb] = str(exc)
    return _START_CHECKED[memory_mb]


def check_limits(limits: SandboxLimits) -> None:
    """GraderError when the grading process could not start under `limits` (checked only for a
    memory limit below the default: the default is known to work)."""
    if limits.memory_mb < SandboxLimits().memory_mb:
        error = _grader_start_error(limits.memory_mb)
        if error:
            raise GraderError(f"--memory-mb {limits.memory_mb} is too small for the grader "
                              f"itself to start (python, NumPy and torch: {error}); this is "
                              "not the learner's fault: use --memory-mb 1024 or more")


@dataclass
class NotebookReport:
    path: str
    sha256: str
    module: str | None
    exercises: list[ExerciseResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def max_points(self) -> int:
        return sum(e.max_points for e in self.exercises)

    @property
    def score(self) -> float:
        return self.points / self.max_points if self.max_points else 0.0

    @property
    def passed(self) -> bool:
        return self.max_points > 0 and self.score >= registry.PASS_MARK - 1e-12

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "module": self.module,
                "points": self.points, "max_points": self.max_points,
                "score": round(self.score, 4), "passed": self.passed, "errors": self.errors,
                "exercises": [e.to_json() for e in self.exercises]}


@dataclass
class GradeReport:
    notebooks: list[NotebookReport]
    seed: int
    skipped: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)  # default: not an exercise nb

    def modules(self) -> dict[str, dict]:
        """Per module: points, max_points, score, passed, notebook (the first one found)."""
        summary = {}
        for nb in self.notebooks:
            if nb.module is None or nb.module in summary or nb.max_points == 0:
                continue
            summary[nb.module] = {"points": nb.points, "max_points": nb.max_points,
                                  "score": round(nb.score, 4), "passed": nb.passed,
                                  "notebook": nb.path}
        return dict(sorted(summary.items()))

    def to_json(self) -> dict:
        return {"course_version": __version__, "grader_version": GRADER_VERSION,
                "pass_mark": registry.PASS_MARK, "seed": self.seed,
                "modules": self.modules(),
                "notebooks": [nb.to_json() for nb in self.notebooks],
                "skipped": self.skipped, "skip_reasons": self.skip_reasons}

    def text(self) -> str:
        lines = []
        for nb in self.notebooks:
            lines.append(f"{nb.path}  (module {nb.module or '?'})")
            for error in nb.errors:
                lines.append(f"  ! {error}")
            for ex in nb.exercises:
                lines.append(f"  {ex.id}: {ex.points}/{ex.max_points}")
                for c in ex.checks:
                    mark = "✓" if c.passed else "✗"
                    lines.append(f"    {mark} {c.name}" + ("" if c.passed else f": {c.message}"))
            if nb.max_points:
                verdict = "passed" if nb.passed else "not passed"
                lines.append(f"  module {nb.module}: {nb.points}/{nb.max_points} points "
                             f"({nb.score:.0%}; pass mark {registry.PASS_MARK:.0%}): {verdict}")
            lines.append("")
        for path in self.skipped:
            reason = self.skip_reasons.get(path, "not an exercise notebook of a graded module")
            lines.append(f"skipped ({reason}): {path}")
        modules = self.modules()
        if modules:
            lines.append("Summary: " + ", ".join(
                f"{m} {v['score']:.0%} {'PASS' if v['passed'] else 'FAIL'}"
                for m, v in modules.items()))
        return "\n".join(lines).rstrip() + "\n"


def _decoded(outcome):
    """The child's outcome with its result decoded from JSON transport (None stays None)."""
    if not isinstance(outcome, dict):
        return None
    outcome = dict(outcome)
    if outcome.get("status") == "ok":
        try:
            outcome["result"] = decode(outcome.get("result"))
        except Exception:  # anything malformed is the submission's problem, not the grader's
            outcome.update(status="error", message="the result sent back could not be read",
                           result=None)
    return outcome


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Prepared:
    """A notebook read and planned, waiting for its sandbox run."""

    path: Path
    data: bytes
    report: NotebookReport
    cells: list
    plan: list  # (exercise, check, inputs, check index), in task order
    tasks: list
    seed: int


def _prepare(path, seed: int, display_path: str | None) -> _Prepared | NotebookReport:
    """Read the notebook, find its module and make every check's inputs (NotebookError if it
    cannot be read); a NotebookReport when there is nothing to run."""
    path = Path(path)
    data = path.read_bytes()
    report = NotebookReport(path=display_path or str(path), sha256=_sha256(data), module=None)
    nb = load_notebook(data, path.name)
    report.module = notebook_module(nb, path.name)
    exercises = registry.module_exercises(report.module) if report.module else []
    if not exercises:
        report.errors.append(f"no graded exercises for module {report.module!r}")
        return report
    tasks, plan = [], []
    for exercise in exercises:
        for index, check in enumerate(exercise.checks):
            inputs = make_inputs(exercise, index, seed)
            plan.append((exercise, check, inputs, index))
            tasks.append({"task": len(tasks), "exercise": exercise.id, "inputs": inputs})
    return _Prepared(path, data, report, code_cells(nb), plan, tasks, seed)


def _run(prepared: _Prepared, limits: SandboxLimits):
    return run_notebook(prepared.data, prepared.path.name, prepared.cells, prepared.tasks, limits)


def _score(prepared: _Prepared, sandbox, limits: SandboxLimits) -> NotebookReport:
    """Score every check of a notebook from its sandbox outcome, in the grader's process."""
    report, cells, seed = prepared.report, prepared.cells, prepared.seed
    if any("failed to start" in note for note in sandbox.notes) and not sandbox.cell_errors:
        error = _grader_start_error(limits.memory_mb)
        if error:
            raise GraderError(f"the grading process could not start under --memory-mb "
                              f"{limits.memory_mb} ({error}): the grader's error, not the "
                              "learner's")
    for index, error in sorted(sandbox.cell_errors.items()):
        report.errors.append(f"cell {index}: {clean_text(error)}")
    report.errors.extend(sandbox.notes)
    tampered = sandbox.notebook_copy_changed
    if tampered:
        report.errors.append("the notebook's code wrote to the notebook file while being "
                             "graded: every check scores 0")
    results = {}
    for task_index, (exercise, check, inputs, index) in enumerate(prepared.plan):
        static = forbidden_uses(cells, exercise.name, exercise.forbidden)
        result = evaluate(exercise, check, inputs, _decoded(sandbox.task_outcomes[task_index]),
                          static,
                          expected_key=(exercise.id, index, seed))
        if tampered:
            result = CheckResult(check.name, 0, check.points, "the notebook file was modified "
                                 "during grading")
        results.setdefault(exercise.id, ExerciseResult(exercise.id)).checks.append(result)
    report.exercises = list(results.values())
    return report


def grade_notebook(path, limits: SandboxLimits = SandboxLimits(), seed: int | None = None,
                   display_path: str | None = None) -> NotebookReport:
    """Grade one notebook. NotebookError if it cannot be read as a notebook."""
    seed = secrets.randbelow(2**31) if seed is None else seed
    prepared = _prepare(path, seed, display_path)
    if isinstance(prepared, NotebookReport):
        return prepared
    return _score(prepared, _run(prepared, limits), limits)


def default_workers() -> int:
    """Notebooks graded side by side: one per core, at most 2 (each runs up to two children)."""
    return max(1, min(2, os.cpu_count() or 1))


def find_notebooks(path: Path) -> list[Path]:
    """The notebooks to grade under `path` (a notebook, or a folder searched recursively)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def grade_path(path, limits: SandboxLimits = SandboxLimits(), seed: int | None = None,
               modules=None, workers: int | None = None) -> GradeReport:
    """Grade a notebook or every exercise notebook in a folder.

    The notebooks' sandboxes run `workers` at a time (default `default_workers()`; each
    notebook still has its own children, limits and time budget); every check is then scored
    here one notebook after another, so the result does not depend on `workers`.

    ValueError for a path that does not exist, is not a notebook, or holds none; for a
    notebook given directly, also when it is corrupted or not an exercise notebook of this
    course (`NotGradable`). GraderError when the grader cannot start under `limits`.
    """
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook (.ipynb)")
    notebooks = find_notebooks(path)
    if not notebooks:
        raise ValueError(f"{path}: no notebooks (.ipynb) found")
    check_limits(limits)
    seed = secrets.randbelow(2**31) if seed is None else seed
    report = GradeReport(notebooks=[], seed=seed)
    graded = ", ".join(sorted(registry.NOTEBOOKS))
    for nb_path in notebooks:
        shown = str(nb_path)
        try:
            nb = load_notebook(nb_path.read_bytes(), nb_path.name)
        except NotebookError as exc:
            if path.is_file():
                raise ValueError(f"{nb_path.name} is {CORRUPTED}: {exc}") from None
            # A damaged notebook must say so, not vanish into "skipped".
            module = notebook_module({}, nb_path.name)
            if module in registry.NOTEBOOKS and (modules is None or module in modules):
                report.notebooks.append(_ungraded(nb_path, shown, module,
                                                  f"cannot be graded: {CORRUPTED} ({exc})"))
            else:  # no module to report it under: listed as skipped, saying why
                report.skipped.append(shown)
                report.skip_reasons[shown] = f"{CORRUPTED}, not a readable notebook"
            continue
        module = notebook_module(nb, nb_path.name)
        if (not registry.module_exercises(module or "")
                or (modules is not None and module not in modules)):
            if path.is_file():
                meta = nb.get("metadata", {})
                ours = isinstance(meta, dict) and isinstance(meta.get("bncourse"), dict)
                what = (f"module {module!r} has no graded exercises" if ours or module
                        else "it has no bncourse metadata and its name does not start with a "
                             "lesson number: another course's notebook?")
                raise NotGradable(f"{nb_path.name} is not an exercise notebook of this course "
                                  f"({what}; graded modules: {graded})")
            report.skipped.append(shown)
            continue
        prepared = _prepare(nb_path, seed, shown)
        report.notebooks.append(prepared)
    pending = [p for p in report.notebooks if isinstance(p, _Prepared)]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending)))) as pool:
        outcomes = dict(zip(map(id, pending), pool.map(lambda p: _run(p, limits), pending)))
    report.notebooks = [_score(p, outcomes[id(p)], limits) if isinstance(p, _Prepared) else p
                        for p in report.notebooks]
    return report


def _ungraded(nb_path: Path, shown: str, module: str | None, error: str) -> NotebookReport:
    """The report of a notebook that could not be graded: its hash, its module, the reason."""
    return NotebookReport(shown, _sha256(nb_path.read_bytes()), module, errors=[error])


def dump_json(report: GradeReport) -> str:
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False)
