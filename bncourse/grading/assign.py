"""Generate `exercises/` from `solutions/` (course authors): `python -m bncourse.grading.assign`.

In every code cell, the lines from `### BEGIN SOLUTION` to `### END SOLUTION` become a stub that
raises `NotImplementedError`, at the marker's indentation (the `def` line and docstring, outside
the markers, stay). Outputs are cleared and the generated notebook is executed, so exercises are
committed with outputs and pass strict nbval. `out_of_date()` (used by the tests) compares the
generated sources with the committed ones without executing anything.

A learner's filled-in exercise is never overwritten: a target whose code differs from the
freshly generated one *and* has replaced one of its stubs (`filled_in`) makes `generate` refuse
(ValueError naming the files) unless `force=True` (`--force`), which first keeps a copy as
`NAME.ipynb.bak`. An author's stale stubs (the solutions changed) are simply regenerated.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

__all__ = ["BEGIN", "END", "STUB", "strip_solutions", "exercise_notebook", "generate",
           "out_of_date", "filled_in", "main"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", 'raise NotImplementedError("replace this line with your code")')


def strip_solutions(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block with the stub; ValueError if markers are unbalanced."""
    out, inside = [], False
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN} inside another solution block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub for stub in STUB)
        elif stripped == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out)


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def exercise_notebook(solution: dict) -> dict:
    """The exercise version of a solution notebook (a dict in nbformat 4), outputs cleared."""
    nb = copy.deepcopy(solution)
    for cell in nb["cells"]:
        cell["source"] = _source(cell)
        if cell["cell_type"] == "code":
            cell["source"] = strip_solutions(cell["source"])
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def _cell_sources(nb: dict) -> list[tuple[str, str]]:
    return [(cell["cell_type"], _source(cell)) for cell in nb["cells"]]


def out_of_date(solutions: Path, exercises: Path) -> list[str]:
    """Why `exercises/` does not match `solutions/` (empty when in sync)."""
    problems = []
    solution_files = sorted(Path(solutions).glob("*.ipynb"))
    names = {p.name for p in solution_files}
    for extra in sorted(Path(exercises).glob("*.ipynb")):
        if extra.name not in names:
            problems.append(f"{extra.name}: in exercises/ but not in solutions/")
    for path in solution_files:
        target = Path(exercises) / path.name
        if not target.exists():
            problems.append(f"{path.name}: missing from exercises/")
            continue
        expected = exercise_notebook(json.loads(path.read_text(encoding="utf-8")))
        actual = json.loads(target.read_text(encoding="utf-8"))
        if _cell_sources(expected) != _cell_sources(actual):
            problems.append(f"{path.name}: exercises/ differs from the generated version")
        elif expected.get("metadata", {}).get("bncourse") != actual.get("metadata", {}).get(
                "bncourse"):
            problems.append(f"{path.name}: metadata['bncourse'] differs")
    return problems


def filled_in(existing: dict, generated: dict) -> bool:
    """Whether `existing` (an exercise notebook on disk) holds a learner's work: its code cells
    differ from `generated` and it has fewer stubs left (a stub was replaced by code)."""
    def code(nb):
        return [_source(c) for c in nb.get("cells", []) if c.get("cell_type") == "code"]

    def stubs(nb):
        return sum(source.count(STUB[1]) for source in code(nb))

    return code(existing) != code(generated) and stubs(existing) < stubs(generated)


def _execute(nb: dict, cwd: Path) -> dict:
    import nbformat
    from nbclient import NotebookClient

    node = nbformat.from_dict(nb)
    NotebookClient(node, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return node


def generate(solutions: Path, exercises: Path, execute: bool = True,
             only: str = "*.ipynb", force: bool = False) -> list[Path]:
    """Write exercises/<name>.ipynb for every solutions/<name>.ipynb matching the glob `only`
    (all by default); returns the paths. ValueError, before anything is written, if a target
    holds a learner's filled-in work, unless `force` (then a copy is kept as NAME.ipynb.bak)."""
    import nbformat

    solutions, exercises = Path(solutions), Path(exercises)
    if not solutions.is_dir():
        raise ValueError(f"{solutions}: no such folder")
    exercises.mkdir(parents=True, exist_ok=True)
    written = []
    matches = sorted(p for p in solutions.glob(only) if p.suffix == ".ipynb")
    if not matches:
        raise ValueError(f"{solutions}: no notebook matches {only!r}")
    notebooks = {path: exercise_notebook(json.loads(path.read_text(encoding="utf-8")))
                 for path in matches}
    learners = []
    for path, nb in notebooks.items():
        target = exercises / path.name
        if target.exists():
            try:
                existing = json.loads(target.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, ValueError):
                existing = None  # unreadable: not an author's generated file either
            if existing is None or filled_in(existing, nb):
                learners.append(target)
    if learners and not force:
        raise ValueError("not overwriting exercises a learner has filled in: "
                         + ", ".join(str(t) for t in learners)
                         + " (use --force to overwrite; a copy is kept as NAME.ipynb.bak)")
    for target in learners:
        shutil.copy2(target, target.with_name(target.name + ".bak"))
    for path, nb in notebooks.items():
        node = _execute(nb, exercises) if execute else nbformat.from_dict(nb)
        target = exercises / path.name
        nbformat.write(node, str(target))
        written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bncourse.grading.assign",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--solutions", default="solutions")
    parser.add_argument("--exercises", default="exercises")
    parser.add_argument("--no-execute", action="store_true")
    parser.add_argument("--only", default="*.ipynb", metavar="GLOB",
                        help="regenerate only the solutions matching GLOB, e.g. '06_*'")
    parser.add_argument("--force", action="store_true",
                        help="overwrite exercise notebooks a learner has filled in (a copy is "
                             "kept as NAME.ipynb.bak)")
    parser.add_argument("--check", action="store_true",
                        help="only report whether exercises/ is out of date (exit 1 if so)")
    args = parser.parse_args(argv)
    if args.check:
        problems = out_of_date(Path(args.solutions), Path(args.exercises))
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    try:
        for target in generate(Path(args.solutions), Path(args.exercises),
                               execute=not args.no_execute, only=args.only,
                               force=args.force):
            print(f"wrote {target}")
    except ValueError as exc:
        print(f"assign: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
