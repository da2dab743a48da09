"""Submissions that try to crash, hang or fool the grader: each gets a clear message and 0 for
the affected checks; the grader never crashes, other exercises are still graded, and learner
files are never written. Short time limits keep this fast."""
import pytest

from bncourse.grading.grade import grade_notebook

from grading_helpers import good_exercises, good_full_marks, GOOD_FORWARD, GOOD_STATS, LIMITS, SETUP, folder_hashes, write_notebook


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


# --- attacks on the confinement and the sealed process (issue 23) -------------------------
# Each body runs inside batch_statistics, then returns the right answer: only an attack that
# the grader lets through could score. Learner files must stay untouched in every case.
from bncourse.grading import confine  # noqa: E402

CONFINED = confine.landlock_abi() >= 4 and confine.seccomp_available()
RIGHT = "return x.mean(axis=(0,) + tuple(range(2, x.ndim))), x.var(axis=(0,) + tuple(range(2, x.ndim)))"


def route(call):
    return f"import torch\nt = torch.from_numpy(x)\n{call}\n{RIGHT}"


F_BN = 'getattr(torch.nn.functional, "batch" + "_norm")'
BN1D = 'getattr(torch.nn, "Batch" + "Norm1d")'
TORCH_BN_ROUTES = [
    ("F.batch_norm", f"{F_BN}(t, None, None, training=True)"),
    ("nn.BatchNorm1d", f"{BN1D}(t.shape[1], dtype=t.dtype)(t.reshape(t.shape[0], t.shape[1], -1))"),
    ("torch.batch_norm", 'getattr(torch, "batch" + "_norm")(t, None, None, None, None, True, '
                         '0.1, 1e-5, False)'),
    ("torch.native_batch_norm", 'getattr(torch, "native_batch" + "_norm")(t, None, None, None, '
                                'None, True, 0.1, 1e-5)'),
    ("torch.ops.aten._native_batch_norm_legit",
     'getattr(torch.ops.aten, "_native_batch" + "_norm_legit").no_stats(t, None, None, True, '
     '0.1, 1e-5)'),
    ("torch.func.vmap", f"torch.func.vmap(lambda r: {F_BN}(r, None, None, training=True))"
                        "(t.unsqueeze(0))"),
    ("torch.func.functional_call", f"torch.func.functional_call({BN1D}(t.shape[1], "
                                   "dtype=t.dtype), {}, (t.reshape(t.shape[0], t.shape[1], -1),))"),
    ("F.instance_norm on a transposed batch",
     'getattr(torch.nn.functional, "instance" + "_norm")(t.transpose(0, 1).reshape(1, '
     't.shape[1], -1))'),
    ("torch's Python decomposition",
     'import torch._decomp.decompositions as d\ngetattr(d, "native_batch" + "_norm")(t, None, '
     'None, None, None, True, 0.1, 1e-5)'),
    ("F.layer_norm on a transposed batch",
     'getattr(torch.nn.functional, "layer" + "_norm")(t.transpose(0, 1).reshape(t.shape[1], -1), '
     '(t[:, 0].numel(),))'),
    ("F.group_norm with one channel a group",
     'getattr(torch.nn.functional, "group" + "_norm")(t.transpose(0, 1).reshape(1, t.shape[1], '
     '-1), t.shape[1])'),
    ("the refusal caught by the learner", f"try:\n    {F_BN}(t, None, None, training=True)\n"
                                          "except BaseException:\n    pass"),
]
ATTACKS = [
    ("a computed-name import of the reference",
     'import builtins\nref = getattr(builtins, "__imp" + "ort__")("bncourse.refer" + "ence", '
     'fromlist=["x"])\n' + RIGHT, "cannot be imported while grading"),
    ("a computed-name import of the grader's lessons",
     'import builtins\ngetattr(builtins, "__imp" + "ort__")("bncourse.grading.less" + "ons.l02_forward")'
     '\n' + RIGHT, "cannot be imported while grading"),
    ("importlib with a built name (static check)",
     'import importlib\nimportlib.import_module("bncourse." + "reference")\n' + RIGHT,
     "flagged: uses an import of a computed name"),
    ("scikit-learn's StandardScaler",
     'import builtins\ngetattr(builtins, "__imp" + "ort__")("sklearn.preprocessing")\n' + RIGHT,
     "cannot be imported while grading"),
    ("reading the reference from disk",
     'import os, bncourse\nopen(os.path.join(os.path.dirname(bncourse.__file__), "refer" + '
     '"ence.py")).read()\n' + RIGHT, "PermissionError"),
    ("reading the parent's environment and command line",
     'import os\ndata = open(f"/proc/{os.getppid()}/environ", "rb").read()\ndata += '
     'open(f"/proc/{os.getppid()}/cmdline", "rb").read()\nif b"s3cret" not in data:\n'
     '    raise RuntimeError("no secret")\n' + RIGHT, "PermissionError"),
    ("the key in its own environment",
     'import os\nif "s3cret" not in str(dict(os.environ)):\n    raise RuntimeError("no secret")\n'
     + RIGHT, "no secret"),
    ("a TCP connection", 'import socket\nsocket.create_connection(("127.0.0.1", 9), timeout=1)\n'
     + RIGHT, "PermissionError"),
    ("a fork loop", "import os\nwhile True:\n    os.fork()\n" + RIGHT, "PermissionError"),
    ("a subprocess", 'import subprocess\nsubprocess.run(["cat", "/etc/hostname"])\n' + RIGHT,
     "PermissionError"),
] + [(f"torch's batch norm through {name}", route(call),
      "flagged: uses torch's " + ("layer or group norm" if name[2:7] in ("layer", "group")
                                  else "batch norm"))
     for name, call in TORCH_BN_ROUTES]


@pytest.mark.skipif(not CONFINED, reason="needs Landlock ABI >= 4 and seccomp (this machine kind)")
@pytest.mark.parametrize("body, expected", [c[1:] for c in ATTACKS], ids=[c[0] for c in ATTACKS])
def test_attacks_on_the_sealed_confined_process_score_zero(tmp_path, monkeypatch, body, expected):
    monkeypatch.setenv("BNCOURSE_CERT_KEY", "s3cret")
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb",
                          [SETUP, GOOD_FORWARD, stats(body)])
    before = folder_hashes(tmp_path)
    report = grade_notebook(path, LIMITS, seed=5)
    assert folder_hashes(tmp_path) == before
    by_id = {e.id: e for e in report.exercises}
    messages = [c.message for c in by_id["02.batch_statistics"].checks]
    assert by_id["02.batch_statistics"].points == 0, messages
    assert all(expected in m for m in messages), messages
    forward = by_id["02.batchnorm_forward"]
    # A static flag of an evasion holds for the whole notebook; a refused call only for its check.
    static = expected.startswith("flagged: uses an import")
    assert (forward.points == forward.max_points) != static, [c.message for c in forward.checks]


@pytest.mark.skipif(not CONFINED, reason="needs Landlock ABI >= 4 and seccomp (this machine kind)")
def test_writes_outside_the_scratch_folder_fail_and_change_nothing(tmp_path):
    other = tmp_path / "other_learner"
    other.mkdir()
    (other / "02_forward_exercises.ipynb").write_text("{}")
    mine = tmp_path / "me"
    mine.mkdir()
    target = mine / "02_forward_exercises.ipynb"
    writes = [f"open({str(p)!r}, 'w').write('pwned')" for p in
              (target, other / "02_forward_exercises.ipynb", tmp_path / "new.txt")]
    writes.append("import bncourse, os\nopen(os.path.join(os.path.dirname(bncourse.__file__), "
                  "'environment.py'), 'a').write('# pwned')")
    path = write_notebook(mine, target.name, [SETUP, GOOD_FORWARD, GOOD_STATS] + writes)
    before = folder_hashes(tmp_path)
    report = grade_notebook(path, LIMITS, seed=5)
    assert folder_hashes(tmp_path) == before and not (tmp_path / "new.txt").exists()
    assert good_full_marks(report)  # the writes failed; the exercises are graded
    errors = [e for e in report.errors if e.startswith("cell ")]
    assert len(errors) == 4 and all("PermissionError" in e for e in errors), report.errors


@pytest.mark.skipif(not CONFINED, reason="needs Landlock ABI >= 4 and seccomp (this machine kind)")
def test_module_04_module_on_torch_batch_norm_fails_and_says_why(tmp_path):
    cell = f'''
import torch
class BatchNorm1d(torch.nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked += 1
        return {F_BN.replace("torch.nn.functional", "torch.nn.functional")}(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
            self.momentum, self.eps)
'''
    path = write_notebook(tmp_path, "04_torch_module_exercises.ipynb", [SETUP, cell])
    report = grade_notebook(path, LIMITS, seed=5)
    lost = [c.message for c in report.exercises[0].checks if not c.passed]
    assert not report.passed and lost
    assert all("uses torch's batch norm" in m for m in lost), lost
