"""bncourse.setup and the environment report (lesson 00)."""
import os
import random
import subprocess
import sys

import matplotlib as mpl
import numpy as np
import pytest
import torch

import bncourse
from bncourse.environment import EnvironmentReport, environment_report, seed_everything


@pytest.fixture(autouse=True)
def _restore_plot_style():
    """setup() sets a plot style for the whole process: put matplotlib's back afterwards."""
    with mpl.rc_context():
        yield


def _draws():
    return random.random(), np.random.rand(3), torch.rand(3)


def test_the_same_seed_repeats_every_generator():
    bncourse.setup(seed=123, threads=1)
    first = _draws()
    bncourse.setup(seed=123, threads=1)
    second = _draws()
    bncourse.setup(seed=124, threads=1)
    other = _draws()
    np.testing.assert_array_equal(first[0], second[0])  # the same seed: the same bits
    np.testing.assert_array_equal(first[1], second[1])
    torch.testing.assert_close(first[2], second[2], rtol=0, atol=0)
    assert not np.array_equal(first[1], other[1]) and not torch.equal(first[2], other[2])


def test_setup_sets_threads_and_returns_a_report(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    report = bncourse.setup(seed=7, threads=2)
    assert torch.get_num_threads() == 2
    assert isinstance(report, EnvironmentReport)
    assert (report.seed, report.threads, report.device) == (7, 2, "cpu")
    report = bncourse.setup()
    assert torch.get_num_threads() == 1 and report.seed == 0
    assert mpl.rcParams["axes.grid"] is True  # the course's plot style is on
    assert os.environ["TQDM_DISABLE"] == "1"  # no progress bars under pytest


def test_report_string_has_no_versions_but_details_do():
    report = environment_report(seed=3, threads=1)
    text = str(report)
    assert text == "bncourse setup: seed=3, threads=1, device=cpu"
    assert repr(report) == text
    for version in (report.python, report.numpy, report.torch):
        assert version not in text
    details = report.details()
    assert details.startswith(text)
    assert torch.__version__.split("+")[0] in details and np.__version__ in details
    assert report.python in details


@pytest.mark.parametrize("kwargs, exception, message", [
    (dict(threads=0), ValueError, r"threads must be at least 1, got 0"),
    (dict(threads=-2), ValueError, r"threads must be at least 1, got -2"),
    (dict(threads=1.5), TypeError, r"threads must be an int, got float"),
    (dict(threads=True), TypeError, r"threads must be an int, got bool"),
    (dict(seed="0"), TypeError, r"seed must be an int, got str"),
    (dict(seed=1.0), TypeError, r"seed must be an int, got float"),
    (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*32 - 1\], got -1"),
    (dict(seed=2**32), ValueError, r"seed must be in \[0, 2\*\*32 - 1\], got 4294967296"),
    (dict(portable="yes"), TypeError, r"portable must be a bool, got str"),
    (dict(portable=False, seed=-1), ValueError, r"seed must be in"),
], ids=["threads0", "threads-neg", "threads-float", "threads-bool", "seed-str", "seed-float",
        "seed-neg", "seed-too-big", "portable-str", "bad-seed-with-portable"])
def test_bad_arguments_raise(kwargs, exception, message):
    threads = torch.get_num_threads()
    mkldnn, nnpack = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    with pytest.raises(exception, match=message):
        bncourse.setup(**kwargs)
    # nothing changed on the way to the error
    assert torch.get_num_threads() == threads and torch.backends.mkldnn.enabled == mkldnn
    assert torch._C._get_nnpack_enabled() == nnpack


def test_seed_everything_is_setup_without_the_side_effects():
    seed_everything(5)
    a = torch.rand(2)
    seed_everything(5)
    torch.testing.assert_close(torch.rand(2), a, rtol=0, atol=0)


def test_public_names():
    assert "setup" in bncourse.__all__ and bncourse.__version__


def test_portable_numerics_turn_off_onednn_and_fix_mkls_branch():
    report = bncourse.setup(portable=True)
    assert torch.backends.mkldnn.enabled is False and torch._C._get_nnpack_enabled() is False
    assert report.numerics.startswith("portable") and report.numerics in report.details()
    if torch.backends.mkl.is_available():
        assert os.environ["MKL_CBWR"] == "COMPATIBLE"
    report = bncourse.setup(portable=False)
    assert torch.backends.mkldnn.enabled is True and torch._C._get_nnpack_enabled() is True
    assert not report.numerics.startswith("portable")
    assert str(report) == "bncourse setup: seed=0, threads=1, device=cpu"  # notebooks' first line


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL")
def test_setup_first_gets_mkls_compatible_branch_in_a_fresh_process():
    done = _python("import bncourse; print(bncourse.setup().numerics)\n"
                   "import torch; torch.randn(60, 100) @ torch.randn(100, 100)\n"
                   "from bncourse.environment import _mkl_branch; print(_mkl_branch())")
    assert done.returncode == 0, done.stderr
    numerics, branch = done.stdout.split("\n")[:2]
    assert numerics == "portable: oneDNN and NNPACK off, MKL_CBWR=COMPATIBLE" and branch == "3"


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL")
def test_mkl_used_before_setup_is_warned_with_what_to_do():
    done = _python("import torch; torch.randn(60, 100) @ torch.randn(100, 100)\n"
                   "import bncourse; print(bncourse.setup().numerics)")
    assert done.returncode == 0, done.stderr
    assert "MKL was already used" in done.stderr and "Restart the kernel" in done.stderr
    assert "MKL CPU-specific" in done.stdout
