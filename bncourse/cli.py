"""The `bncourse` command: open the course, check the environment, grade, certify.

    bncourse lab [JUPYTER OPTIONS]  open the course (lessons and exercises) in JupyterLab
    bncourse doctor         check that this environment can run the course
    bncourse grade PATH     grade exercise notebooks (see `bncourse grade --help`)
    bncourse keygen         make an instructor's Ed25519 key pair
    bncourse certificate    grade every module and issue a certificate (Open Badges 3.0)
    bncourse verify RECORD  check a credential's signature (--public-key) or re-grade it (--regrade)
    bncourse book [--out DIR]  build the course as a static website
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from bncourse._version import __version__

__all__ = ["main", "find_course_root", "doctor_checks", "sandbox_check", "protections_check",
           "lab_command"]

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
    # `bncourse lab` runs `python -m jupyterlab`, so what counts is this interpreter's JupyterLab,
    # not a `jupyter` on PATH.
    lab_ok = importlib.util.find_spec("jupyterlab") is not None
    results.append(("jupyterlab", lab_ok, "installed" if lab_ok else
                    "not found. Fix: pip install -e '.[dev]' (installs JupyterLab)"))
    root = find_course_root()
    # Never the absolute path: doctor's output is shown in lesson 00 and must read the same on
    # every machine.
    results.append(("course folder", root is not None, _describe_root(root) if root else
                    "notebooks/ not found: run bncourse from the course checkout"))
    results.append(sandbox_check(root))
    results.append(protections_check())
    return results


def protections_check() -> tuple[str, bool, str]:
    """Which of the grader's confinement mechanisms this machine has (issue 23). Grading works
    without them; what is missing is said, not failed."""
    try:
        from bncourse.grading.confine import active_protections

        found = active_protections()
    except Exception as exc:  # report, never raise
        return "grader protections", True, f"not determined ({exc})"
    landlock = found.get("landlock")
    parts = [f"Landlock {landlock}" + (" (files and network)" if found.get("landlock_network")
                                       else " (files)") if landlock else "no Landlock (files "
             "outside the scratch folder are not protected)",
             "seccomp (no new processes)" if found.get("seccomp") else "no seccomp",
             "rlimits" if found.get("rlimits") else "no rlimits"]
    if found.get("rlimits") and not found.get("rlimit_nproc_binds"):
        parts.append("RLIMIT_NPROC does not bind here (root)")
    return "grader protections", True, ", ".join(parts)


def _describe_root(root: Path) -> str:
    present = [name + "/" for name in ("notebooks", "exercises", "solutions")
               if (root / name).is_dir()]
    try:
        where = Path(os.path.relpath(root, Path.cwd()))
    except ValueError:  # another drive (Windows)
        where = None
    place = "the current folder" if where == Path(".") else (
        f"{where.as_posix()}/" if where is not None and not where.is_absolute()
        and len(where.parts) <= 3 else "the checkout this package was installed from")
    return f"found: {place} (with {', '.join(present)})"


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


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def lab_command(root: Path, jupyter_args: list[str], as_root: bool | None = None) -> list[str]:
    """The JupyterLab command `bncourse lab` runs: rooted at the course folder (so both
    `notebooks/` and `exercises/` can be reached), opening lesson 00, with the learner's own
    Jupyter options passed through. As root (a Docker container) Jupyter refuses to start
    without `--allow-root`, so it is added there."""
    if not isinstance(jupyter_args, (list, tuple)):
        raise TypeError(f"jupyter_args must be a list of strings, got {type(jupyter_args).__name__}")
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    start = root / "notebooks" / "00_start_here.ipynb"
    if start.is_file() and not any(not arg.startswith("-") for arg in jupyter_args):
        cmd.append(str(start))
    if (_is_root() if as_root is None else as_root) and "--allow-root" not in jupyter_args:
        cmd.append("--allow-root")
    return cmd + list(jupyter_args)


def _cmd_lab(args) -> int:
    root = find_course_root()
    if root is None:
        print("bncourse lab: cannot find the course's notebooks/ folder; "
              "run it from the course checkout.", file=sys.stderr)
        return 2
    extra = list(args.jupyter_args)
    if args.no_browser and "--no-browser" not in extra:
        extra.append("--no-browser")
    cmd = lab_command(root, extra)
    if "--allow-root" in cmd and "--allow-root" not in extra:
        print("bncourse lab: running as root (a container?), so --allow-root is passed to Jupyter.")
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
    lab = sub.add_parser(
        "lab", help="open the course (lessons and exercises) in JupyterLab",
        description="Open JupyterLab on the course folder, at lesson 00. Any further options go "
                    "to Jupyter unchanged, e.g. `bncourse lab --port 8899 --ip 0.0.0.0`.")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser window")

    lab.set_defaults(func=_cmd_lab)
    doctor = sub.add_parser("doctor", help="check that this environment can run the course")
    doctor.set_defaults(func=_cmd_doctor)
    from bncourse.grading.cli import register as register_grading

    register_grading(sub)
    from bncourse.book.cli import register as register_book

    register_book(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `bncourse lab` passes the options it does not know to Jupyter; every other command is strict.
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "lab":
        args.jupyter_args = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
