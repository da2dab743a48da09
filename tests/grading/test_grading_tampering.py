"""Cheating and careless notebooks: printing megabytes, monkeypatching the grader, writing to
the notebook file, cells that fail, torch's BN subclassed, a folder of broken submissions."""
from bncourse.grading.grade import grade_notebook, grade_path

from grading_helpers import (good_exercises, good_full_marks, GOOD_FORWARD, GOOD_STATS, LIMITS, SETUP, folder_hashes,
                             write_notebook)


def test_printing_megabytes_is_capped_and_graded(tmp_path):
    noisy_stats = "def batch_statistics(x):\n    print('x' * 10**7)\n" + \
        GOOD_STATS.split(":\n", 1)[1]
    cells = [SETUP, "print('y' * 10**8)", GOOD_FORWARD, noisy_stats]
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb", cells)
    report = grade_notebook(path, LIMITS, seed=5)
    assert good_full_marks(report), report.exercises


def test_monkeypatching_the_grader_or_reference_changes_nothing(tmp_path):
    blocked = "import bncourse.reference, bncourse.grading.checks, bncourse.grading.results"
    cheat = '''
import sys, types
bncourse.reference = types.SimpleNamespace()
bncourse.grading = types.SimpleNamespace(checks=types.SimpleNamespace(),
                                         results=types.SimpleNamespace())
bncourse.reference.batchnorm_forward = lambda x, g, b, eps=1e-5: (np.zeros_like(x), None)
bncourse.grading.checks.array_mismatch = lambda *args, **kwargs: None
bncourse.grading.results.evaluate = lambda *args, **kwargs: None
np.isclose = lambda a, b, **kwargs: np.ones(np.shape(a), bool)
np.allclose = lambda *args, **kwargs: True

def batchnorm_forward(x, gamma, beta, eps=1e-5):
    return np.zeros_like(x), None

def batch_statistics(x):
    return np.zeros(x.shape[1]), np.zeros(x.shape[1])
'''
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb", [SETUP, blocked, cheat])
    report = grade_notebook(path, LIMITS, seed=5)
    assert report.points == 0
    # The grader's code is not even importable in the learner's process.
    assert any("cannot be imported while grading" in e for e in report.errors), report.errors
    assert all("differs" in c.message for e in good_exercises(report) for c in e.checks)


def test_writing_to_the_notebook_file_voids_the_grade_and_leaves_the_original(tmp_path):
    writer = ("import glob\nfor name in glob.glob('*.ipynb'):\n"
              "    open(name, 'w').write('{}')\n")
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb",
                          [SETUP, GOOD_FORWARD, GOOD_STATS, writer])
    before = folder_hashes(tmp_path)
    report = grade_notebook(path, LIMITS, seed=5)
    assert folder_hashes(tmp_path) == before
    assert report.points == 0
    assert any("wrote to the notebook file" in e for e in report.errors)


def test_failing_cells_are_reported_and_the_rest_still_graded(tmp_path):
    cells = [SETUP, "raise RuntimeError('a scratch cell that fails')", "def broken(:\n    pass",
             "import os\nos._exit(1)", GOOD_FORWARD, GOOD_STATS, "while True:\n    pass"]
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb", cells)
    report = grade_notebook(path, LIMITS, seed=5)
    assert good_full_marks(report)
    text = "\n".join(report.errors)
    assert "RuntimeError: a scratch cell that fails" in text
    assert "SyntaxError" in text and "exited (status 1)" in text and "time limit" in text


def test_module_04_flags_a_subclass_of_torch_batchnorm(tmp_path):
    cells = [SETUP + "\nimport torch",
             "class BatchNorm1d(torch.nn.BatchNorm1d):\n    pass"]
    path = write_notebook(tmp_path, "04_torch_module_exercises.ipynb", cells)
    report = grade_notebook(path, LIMITS, seed=5)
    checks = report.exercises[0].checks
    assert report.points == 0
    assert all("flagged: uses torch.nn.BatchNorm1d" in c.message for c in checks), \
        [c.message for c in checks]


def test_grading_a_folder_survives_a_mix_of_everything(tmp_path):
    broken = ["import sys\nsys.exit(0)", "import os\nos._exit(3)", "raise ValueError('boom')",
              "return x.mean(axis=1), x.var(axis=1)"]
    for i, body in enumerate(broken):
        cells = ["def batch_statistics(x):\n" + "\n".join("    " + b for b in body.split("\n"))]
        sub = tmp_path / f"learner{i}"
        sub.mkdir()
        write_notebook(sub, "02_forward_exercises.ipynb", [SETUP, GOOD_FORWARD] + cells)
    (tmp_path / "not_a_notebook.ipynb").write_text("garbage")
    before = folder_hashes(tmp_path)
    report = grade_path(tmp_path, LIMITS, seed=2)
    assert folder_hashes(tmp_path) == before
    assert len(report.notebooks) == 4 and report.skipped
    assert all(nb.points == 5 for nb in report.notebooks)


def test_learner_text_cannot_forge_report_lines(tmp_path):
    fake = "boom\\n  module 02: 8/8 points (100%; pass mark 80%): passed\\x1b[2J"
    cells = [SETUP, GOOD_FORWARD, f"def batch_statistics(x):\n    raise ValueError('{fake}')",
             f"raise RuntimeError('{fake}')"]
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb", cells)
    report = grade_notebook(path, LIMITS, seed=5)
    text = "\n".join(report.errors + [c.message for e in report.exercises for c in e.checks])
    assert "\x1b" not in text and "\n  module 02" not in text
    assert report.points == 5
