"""Submissions that try to crash, hang or fool the grader: each gets a clear message and 0 for
the affected checks; the grader never crashes, other exercises are still graded, and learner
files are never written. Short time limits keep this fast."""
import pytest

from bncourse.grading.grade import grade_notebook

from grading_helpers import GOOD_FORWARD, LIMITS, SETUP, folder_hashes, write_notebook


def stats(body):
    """A batch_statistics whose body is `body` (indented by the caller's text)."""
    return "def batch_statistics(x):\n" + "\n".join("    " + line for line in body.split("\n"))


# (case id, extra cells, substring expected in each batch_statistics message, forward passes?)
CASES = [
    ("infinite loop", [stats("while True:\n    pass")], "stopped after 2 s", True),
    ("loop that swallows the time limit",
     [stats("while True:\n    try:\n        while True:\n            pass\n"
            "    except BaseException:\n        pass")], "killed (time limit)", True),
    ("sys.exit", [stats("import sys\nsys.exit(0)")], "called sys.exit(0)", True),
    ("os._exit", [stats("import os\nos._exit(3)")], "exited (status 3)", True),
    ("exception", [stats("raise ValueError('boom')")], "ValueError: boom", True),
    ("NaN output", [stats("return np.full(x.shape[1], np.nan), np.ones(x.shape[1])")],
     "mean contains NaN", True),
    ("wrong shape", [stats("return x.mean(axis=1), x.var(axis=1)")], "has shape", True),
    ("wrong dtype", [stats("return 'mean', 'var'")], "must be an array of numbers", True),
    ("one value, not a tuple", [stats("return x.mean(axis=0)")],
     "must return a tuple (mean, var)", True),
    ("deep recursion", [stats("return batch_statistics(x)")], "RecursionError", True),
    ("segmentation fault", [stats("import ctypes\nctypes.string_at(0)")],
     "killed by SIGSEGV", True),
    ("huge allocation", [stats("return np.ones((10**6, 10**6)), None")], "MemoryError", True),
    ("megabytes printed to fd 1", [stats("import os\nfor _ in range(100):\n"
                                         "    os.write(1, b'x' * 2**20)\nreturn 0, 0")],
     "File too large", True),
    ("calls the reference",
     [stats("out, cache = bncourse.reference.batchnorm_forward(x, np.ones(x.shape[1]), "
            "np.zeros(x.shape[1]))\nreturn cache.x_hat.mean(0), 1 / cache.inv_std**2")],
     "flagged: uses bncourse.reference.batchnorm_forward", True),
    ("calls torch's batch norm, hidden from the source",
     [stats("import torch\nfn = getattr(torch.nn.functional, 'batch' + '_norm')\n"
            "fn(torch.ones(2, 3), None, None, training=True)\n"
            "return x.mean((0,)), x.var((0,))")],
     "flagged: uses torch's batch norm", True),
]


@pytest.mark.parametrize("cells, expected, forward_ok", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_adversarial_submission_scores_zero_with_a_message(tmp_path, cells, expected,
                                                           forward_ok):
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb",
                          [SETUP, GOOD_FORWARD] + cells)
    before = folder_hashes(tmp_path)
    report = grade_notebook(path, LIMITS, seed=5)
    assert folder_hashes(tmp_path) == before
    by_id = {e.id: e for e in report.exercises}
    stats_checks = by_id["02.batch_statistics"].checks
    assert all(c.points == 0 for c in stats_checks), [c.message for c in stats_checks]
    assert all(expected in c.message for c in stats_checks), [c.message for c in stats_checks]
    forward = by_id["02.batchnorm_forward"]
    assert (forward.points == forward.max_points) == forward_ok, [c.message for c in forward.checks]
