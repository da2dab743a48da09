"""What process isolation costs the grader: `bncourse grade solutions/` against the same checks
run in-process by `bncourse.check`.

    python benchmarks/bench_grading.py

Prints the sandboxed grading time, the in-process time (executing the solution cells once and
running every check on their objects), the start-up time of one child interpreter, and the
difference per check and per notebook. See benchmarks/README.md for a measured run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat

import bncourse
from bncourse.grading import registry
from bncourse.grading.grade import grade_path
from bncourse.grading.notebook import code_cells

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"


def main() -> None:
    start = time.perf_counter()
    report = grade_path(SOLUTIONS, seed=0)
    sandboxed = time.perf_counter() - start
    n_checks = sum(len(ex.checks) for nb in report.notebooks for ex in nb.exercises)

    namespace = {"__name__": "solutions"}
    start = time.perf_counter()
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        for _, source in code_cells(nbformat.read(path, as_version=4)):
            exec(compile(source, path.name, "exec"), namespace)
    executing = time.perf_counter() - start
    start = time.perf_counter()
    for module in registry.REQUIRED_MODULES:
        for exercise in registry.module_exercises(module):
            bncourse.check(exercise.id, namespace[exercise.name], quiet=True)
    checking = time.perf_counter() - start

    start = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-c", "import numpy, torch, bncourse"], check=True)
    child_start = time.perf_counter() - start

    overhead = sandboxed - executing - checking
    print(f"sandboxed: bncourse grade solutions/: {sandboxed:.1f} s "
          f"({len(report.notebooks)} notebooks, {n_checks} checks)")
    print(f"in-process: solution cells {executing:.2f} s + {n_checks} checks {checking:.2f} s")
    print(f"one child interpreter start (import numpy, torch, bncourse): {child_start:.2f} s")
    print(f"isolation overhead: {overhead:.1f} s, {overhead / len(report.notebooks):.1f} s per "
          f"notebook, {1000 * overhead / n_checks:.0f} ms per check")


if __name__ == "__main__":
    main()
