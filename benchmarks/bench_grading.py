"""What the confined, sealed grader costs: a passing learner, a hanging one, feedback.

    python benchmarks/bench_grading.py            # passing learner + feedback (about a minute)
    python benchmarks/bench_grading.py --per-module   # ... and each module's notebook alone
    python benchmarks/bench_grading.py --hang     # also a submission that hangs in every check
    python benchmarks/bench_grading.py --hang --swallow   # ... and swallows the time limit

Prints the protections active on this machine, the time to grade the solutions folder as
`bncourse certificate` does (confined child processes, `bncourse grade`'s limits: 20 s per
check, 45 s for all checks of a notebook; two notebooks at a time) against the issue's 30 s,
the slowest `bncourse.check` (in-process feedback) against 2 s, and with --hang the time per
module of a submission whose every graded object hangs, against 60 s. See benchmarks/README.md for a measured run.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

import bncourse
from bncourse.grading import registry
from bncourse.grading.confine import active_protections
from bncourse.grading.grade import default_workers, grade_notebook, grade_path
from bncourse.grading.notebook import code_cells
from bncourse.grading.sandbox import SandboxLimits, child_mode

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"
LIMITS = SandboxLimits(timeout=20.0)  # what `bncourse grade` uses (its --timeout default)
HANG = "while True:\n        pass"
SWALLOW = ("while True:\n        try:\n            while True:\n                pass\n"
           "        except BaseException:\n            pass")


def hanging_notebook(folder: Path, module: str, body: str) -> Path:
    """The module's exercise notebook in which every graded object hangs when used."""
    cells = ["import numpy as np\nimport bncourse\nbncourse.setup(seed=0, threads=1)"]
    for exercise in registry.module_exercises(module):
        if exercise.kind == "class":
            cells.append(f"import torch\nclass {exercise.name}(torch.nn.Module):\n"
                         "    def __init__(self, *args, **kwargs):\n        "
                         + body.replace("\n", "\n    "))
        else:
            cells.append(f"def {exercise.name}(*args, **kwargs):\n    {body}")
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    path = folder / registry.NOTEBOOKS[module]
    nbformat.write(nb, path)
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (less load-dependent than wall)."""
    me, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                       resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--swallow", action="store_true")
    parser.add_argument("--per-module", action="store_true",
                        help="also grade each module's notebook alone and time it")
    args = parser.parse_args()
    # The feedback part runs the solutions' cells in this process, as a learner's kernel does:
    # the same numerics (bncourse.setup's portable mode fixes MKL's branch at its first call).
    bncourse.setup(seed=0, threads=1)
    print("protections:", ", ".join(f"{k}={v}" for k, v in active_protections().items()))
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")

    start = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-c", "import numpy, torch"], check=True)
    print(f"one interpreter start (import numpy, torch): {time.perf_counter() - start:.2f} s")

    # What `bncourse certificate` and `bncourse grade FOLDER` do: the whole folder, the
    # notebooks' sandboxes two at a time (grade.default_workers()), scored in order.
    start, cpu = time.perf_counter(), cpu_seconds()
    report = grade_path(SOLUTIONS, LIMITS, seed=0, modules=registry.REQUIRED_MODULES)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    checks = sum(len(e.checks) for nb in report.notebooks for e in nb.exercises)
    points = sum(nb.points for nb in report.notebooks)
    max_points = sum(nb.max_points for nb in report.notebooks)
    print(f"passing learner, all {len(registry.REQUIRED_MODULES)} modules ({checks} checks, "
          f"{points}/{max_points} points), {default_workers()} notebooks at a time: "
          f"{seconds:.1f} s wall, {cpu:.1f} s CPU (target < 30 s); load average now "
          f"{os.getloadavg()[0]:.1f}")

    if args.per_module:
        for module in registry.REQUIRED_MODULES:
            path = SOLUTIONS / registry.NOTEBOOKS[module]
            modes = sorted({child_mode(e) for e in registry.module_exercises(module)})
            start, cpu = time.perf_counter(), cpu_seconds()
            report = grade_notebook(path, LIMITS, seed=0)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            print(f"  passing {module} alone: {seconds:5.1f} s wall, {cpu:5.1f} s CPU  "
                  f"{report.points}/{report.max_points} points, children: {'+'.join(modes)}")

    namespace = {"__name__": "solutions"}
    for module in registry.REQUIRED_MODULES:
        nb = nbformat.read(SOLUTIONS / registry.NOTEBOOKS[module], as_version=4)
        for _, source in code_cells(nb):
            exec(compile(source, module, "exec"), namespace)
    slowest = (0.0, "")
    for module in registry.REQUIRED_MODULES:
        for exercise in registry.module_exercises(module):
            start = time.perf_counter()
            bncourse.check(exercise.id, namespace[exercise.name], quiet=True)
            slowest = max(slowest, (time.perf_counter() - start, exercise.id))
    print(f"feedback: slowest bncourse.check {slowest[1]}: {slowest[0]:.2f} s (target < 2 s)")

    if args.hang:
        body = SWALLOW if args.swallow else HANG
        worst = 0.0
        with tempfile.TemporaryDirectory() as folder:
            for module in registry.REQUIRED_MODULES:
                path = hanging_notebook(Path(folder), module, body)
                start = time.perf_counter()
                report = grade_notebook(path, LIMITS, seed=0)
                seconds = time.perf_counter() - start
                worst = max(worst, seconds)
                print(f"hanging {module}: {seconds:5.1f} s  {report.points}/{report.max_points} "
                      "points")
        print(f"hanging in every check{' (time limit swallowed)' if args.swallow else ''}: "
              f"worst module {worst:.1f} s (target < 60 s)")


if __name__ == "__main__":
    main()
