"""Helpers for the grading tests (imported by the tests and conftest.py): notebooks written
to tmp dirs, solution cells, file hashes."""
import hashlib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bncourse.grading.notebook import code_cells
from bncourse.grading.sandbox import SandboxLimits

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"


def solution_cells(filename):
    """The code cells of a solution notebook (check calls dropped), as source strings."""
    nb = nbformat.read(SOLUTIONS / filename, as_version=4)
    return [source for _, source in code_cells(nb)]


def write_notebook(folder, filename, sources, module=None):
    """A notebook of code cells (after a markdown title) at folder/filename."""
    nb = new_notebook(cells=[new_markdown_cell("# test notebook")]
                      + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if module:
        nb.metadata["bncourse"] = {"module": module}
    path = Path(folder) / filename
    nbformat.write(nb, path)
    return path


def folder_hashes(folder):
    """SHA-256 of every file under folder, by relative path."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# Short limits keep the adversarial tests fast.
LIMITS = SandboxLimits(timeout=2.0, memory_mb=2048, max_restarts=6)

SETUP = "import numpy as np\nimport bncourse\nbncourse.setup(seed=0, threads=1)"
GOOD_FORWARD = '''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    out = gamma.reshape(shape) * (x - mu) / np.sqrt(var + eps) + beta.reshape(shape)
    return out.astype(x.dtype), None
'''
GOOD_STATS = '''
def batch_statistics(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)
'''


def solution_objects(source, filename, **replacements):
    """Execute solution cells with text replaced (a typical mistake); return the names they define."""
    for old, new in replacements.items():
        assert old in source, old
        source = source.replace(old, new)
    namespace = {"__name__": "learner"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def check_messages(exercise_id, obj):
    """`bncourse.check` quietly: the report and the messages of the checks that lost points."""
    import bncourse

    report = bncourse.check(exercise_id, obj, quiet=True)
    return report, [c.message for c in report.result.checks if c.points < c.max_points]


# The two module-02 exercises GOOD_STATS and GOOD_FORWARD answer (module 02 has more; a test
# notebook that holds only these two is judged on them).
GOOD_IDS = ("02.batch_statistics", "02.batchnorm_forward")


def good_exercises(report):
    return [e for e in report.exercises if e.id in GOOD_IDS]


def good_full_marks(report) -> bool:
    """Every check of the exercises GOOD_STATS and GOOD_FORWARD answer passed."""
    found = good_exercises(report)
    return len(found) == len(GOOD_IDS) and all(e.points == e.max_points for e in found)
