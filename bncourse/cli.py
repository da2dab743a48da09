"""The `bncourse` command: open the course, check the environment, grade, certify.

    bncourse lab            open the course notebooks in JupyterLab
    bncourse doctor         check that this environment can run the course
    bncourse grade PATH     grade exercise notebooks (see `bncourse grade --help`)
    bncourse certificate    grade every module and issue a certificate
    bncourse verify RECORD  re-grade and check a certificate record
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bncourse._version import __version__

__all__ = ["main", "find_course_root", "doctor_checks", "sandbox_check"]

# The packages the course needs at run time, by import name.
RUNTIME_MODULES = ["numpy", "torch", "matplotlib", "tqdm", "sklearn", "gymnasium", "mnist1d",
                   "nbformat", "nbclient", "ipykernel"]


def find_course_root(start: Path | None = None) -> Path | None:
    """The folder holding `notebooks/` and `pyproject.toml`: the working directory or a parent,
    else the checkout this package was installed from (editable installs)."""
    candidates = [Path(start or Path.cwd()).resolve()]
    candidates += list(candidates[0].parents)
    candidates.append(Path(__file__).resolve().parent.parent)
    for folder in candidates:
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return None


def doctor_checks() -> list[tuple[str, bool, str]]:
    """(what, ok, detail) for each thing the course needs."""
    results = []
    for name in RUNTIME_MODULES:
        try:
            module = importlib.import_module(name)
            results.append((name, True, getattr(module, "__version__", "installed")))
        except Exception as exc:  # a broken install is reported, not raised
            results.append((name, False, f"cannot import: {exc}. Fix: pip install -e '.[dev]'"))
    try:
        import torch

        cuda = torch.version.cuda
        detail = f"torch {torch.__version__}: " + (
            f"CUDA build {cuda} (fine, but the CPU build is enough for this course)"
            if cuda else "CPU build")
        results.append(("torch build", True, detail))
    except Exception:
        pass
    kernel_ok = shutil.which("jupyter") is not None
    results.append(("jupyter", kernel_ok, "found" if kernel_ok else
                    "not found. Fix: pip install -e '.[dev]' (installs JupyterLab)"))
    root = find_course_root()
    results.append(("course folder", root is not None, str(root) if root else
                    "notebooks/ not found: run bncourse from the course checkout"))
    results.append(sandbox_check(root))
    return results


def sandbox_check(root: Path | None) -> tuple[str, bool, str]:
    """Grade one solution notebook in the grader's child process: does `bncourse grade` work
    here (child interpreter, resource limits, the pipe back)? Takes about 2 s."""
    name = "grading sandbox"
    path = root / "solutions" / "02_forward_exercises.ipynb" if root else None
    if path is None or not path.is_file():
        return name, True, "not checked (no solutions/02_forward_exercises.ipynb here)"
    from bncourse.grading.grade import grade_notebook

    start = time.perf_counter()
    try:
        report = grade_notebook(path, seed=0)
    except Exception as exc:  # report, never raise: doctor is for broken environments
        return name, False, f"cannot grade: {exc}"
    seconds = time.perf_counter() - start
    if report.max_points and report.points == report.max_points:
        return name, True, (f"a solution notebook graded {report.points}/{report.max_points} "
                            f"in a child process ({seconds:.1f} s)")
    problem = "; ".join(report.errors) or f"{report.points}/{report.max_points} points"
    return name, False, (f"a solution notebook did not grade fully ({problem}). "
                         "Check that `python -I -c 'import torch, bncourse'` works")


def _cmd_lab(args) -> int:
    root = find_course_root()
    if root is None:
        print("bncourse lab: cannot find the course's notebooks/ folder; "
              "run it from the course checkout.", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "jupyterlab", str(root / "notebooks")]
    if args.no_browser:
        cmd.append("--no-browser")
    print("Opening the course:", " ".join(cmd))
    return subprocess.call(cmd, cwd=root)


def _cmd_doctor(args) -> int:
    results = doctor_checks()
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"  [{'ok' if ok else 'FAIL'}] {name:<{width}}  {detail}")
    failed = [name for name, ok, _ in results if not ok]
    print("All good: open the course with `bncourse lab`." if not failed
          else f"{len(failed)} problem(s): {', '.join(failed)}. See README.md, Troubleshooting.")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bncourse", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bncourse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    lab = sub.add_parser("lab", help="open the course notebooks in JupyterLab")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    lab.set_defaults(func=_cmd_lab)
    doctor = sub.add_parser("doctor", help="check that this environment can run the course")
    doctor.set_defaults(func=_cmd_doctor)
    from bncourse.grading.cli import register as register_grading

    register_grading(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
