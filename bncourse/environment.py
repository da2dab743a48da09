"""Reproducible set-up for every notebook, and the environment report (lesson 00).

`setup()` is the first code cell of every notebook: it seeds Python, NumPy and torch, fixes the
number of threads (float32 reductions depend on it), makes float results the same on Intel and
AMD CPUs (`portable=True`, below), and sets one plot style.
"""
from __future__ import annotations

import os
import platform
import random
import sys
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["setup", "EnvironmentReport", "environment_report", "seed_everything"]


@dataclass(frozen=True)
class EnvironmentReport:
    """What `setup()` found: versions, device and thread count."""

    python: str
    numpy: str
    torch: str
    device: str
    threads: int
    seed: int
    numerics: str = "default"

    def __str__(self) -> str:
        # Versions are left out on purpose: this line is printed by the first cell of every
        # notebook and compared by nbval, so it must not change when a package is upgraded.
        return f"bncourse setup: seed={self.seed}, threads={self.threads}, device={self.device}"

    def __repr__(self) -> str:
        return str(self)

    def details(self) -> str:
        """Versions too, for lesson 00 and bug reports (varies between installs)."""
        return (f"{self}\n  python {self.python}, numpy {self.numpy}, torch {self.torch}\n"
                f"  numerics: {self.numerics}")


def seed_everything(seed: int = 0) -> None:
    """Seed Python's `random`, NumPy's global generator and torch."""
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:  # NumPy's limit; checked first so nothing is half-seeded
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# MKL's service functions, exported by torch's CPU library on x86 (mkl_service.h's constants).
_MKL_CBWR_BRANCH = 1
_MKL_CBWR_COMPATIBLE = 3


def _mkl_branch() -> int | None:
    """MKL's code branch (`mkl_cbwr_get(MKL_CBWR_BRANCH)`), or None where torch has no MKL."""
    import ctypes

    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return get(_MKL_CBWR_BRANCH)


def _set_numerics(portable: bool) -> str:
    """Make float results independent of which x86 CPU model runs them; say what holds.

    Three libraries under torch choose their code by the CPU, and their sums then round
    differently: MKL (matrix products) by the vendor and instruction set, oneDNN (convolutions)
    by the instruction set and cache sizes, NNPACK (3x3-style convolutions of batches of 16 or
    more once oneDNN is off: Winograd transforms, blocked by the L1 cache size, with rounding
    errors hundreds of times a direct sum's). A few last bits are enough to change a training
    run after a few hundred steps, so a notebook executed on an Intel machine would not
    reproduce on an AMD one. Portable: MKL's COMPATIBLE branch (Conditional Numerical
    Reproducibility: the same results on Intel and non-Intel CPUs), oneDNN and NNPACK off, so
    convolutions run torch's own im2col + MKL matrix product (`aten::thnn_conv2d`). What stays
    CPU-dependent: torch's own vectorised kernels, chosen by
    `torch.backends.cpu.get_cpu_capability()` (AVX512 on this course's machines; an AVX2-only
    or ARM CPU sums in other orders). Costs speed: matrix products about 2.5x and convolutions
    2-3x slower.
    """
    import torch

    if not portable:
        torch.backends.mkldnn.enabled = True
        torch.backends.nnpack.set_flags(True)
        if _mkl_branch() == _MKL_CBWR_COMPATIBLE:  # fixed at MKL's first call: cannot undo
            return ("oneDNN and NNPACK on, MKL_CBWR=COMPATIBLE (kept from an earlier setup in "
                    "this process)")
        return "default (results may differ in the last bits between CPU models)"
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    if not torch.backends.mkl.is_available():
        return "portable: oneDNN and NNPACK off (no MKL in this torch)"
    # MKL reads MKL_CBWR once, at its first call in the process.
    os.environ["MKL_CBWR"] = "COMPATIBLE"
    branch = _mkl_branch()
    if branch is None:
        return ("portable: oneDNN and NNPACK off, MKL_CBWR=COMPATIBLE (not verifiable in this "
                "torch build)")
    if branch != _MKL_CBWR_COMPATIBLE:
        warnings.warn(
            "bncourse.setup(): MKL was already used in this process, so its results stay "
            "CPU-specific and this notebook's numbers may differ from the committed ones in the "
            "last digits. Restart the kernel and run bncourse.setup() before any other cell.",
            RuntimeWarning, stacklevel=3)
        return "oneDNN and NNPACK off, MKL CPU-specific (it was used before setup())"
    return "portable: oneDNN and NNPACK off, MKL_CBWR=COMPATIBLE"


def environment_report(seed: int = 0, threads: int | None = None,
                       numerics: str = "default") -> EnvironmentReport:
    """Collect versions, the device torch would use (`cuda` when present) and the thread count."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return EnvironmentReport(
        python=platform.python_version(),
        numpy=np.__version__,
        torch=torch.__version__.split("+")[0],
        device=device,
        threads=torch.get_num_threads() if threads is None else threads,
        seed=seed,
        numerics=numerics,
    )


def setup(seed: int = 0, threads: int = 1, portable: bool = True) -> EnvironmentReport:
    """Seed everything, fix the thread count, set the plot style; return an environment report.

    Args:
        seed: seed for Python, NumPy and torch.
        threads: torch intra-op threads. One thread makes float32 results repeatable from run
            to run on the same machine, which strict nbval needs.
        portable: the same float results on Intel and AMD CPUs of the same torch CPU
            capability (MKL's COMPATIBLE branch; torch's own convolutions instead of
            oneDNN's or NNPACK's), so a notebook reproduces its committed outputs on another
            machine; matrix products and convolutions run 2-3x slower. `False` restores the
            fastest, CPU-specific code. Run `setup()` first: MKL fixes its branch at its first
            call (a warning says when it came too late).
    """
    import torch

    if not isinstance(threads, int) or isinstance(threads, bool):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if not isinstance(portable, bool):
        raise TypeError(f"portable must be a bool, got {type(portable).__name__}")
    seed_everything(seed)  # checks the seed before anything changes
    numerics = _set_numerics(portable)
    torch.set_num_threads(threads)
    # Progress bars are noise in executed notebooks under test; learners still see them.
    if os.environ.get("PYTEST_CURRENT_TEST") or "pytest" in sys.modules:
        os.environ.setdefault("TQDM_DISABLE", "1")
    _use_inline_plots_in_notebooks()
    _set_plot_style()  # after the backend: activating the inline backend applies its own rc
    return environment_report(seed=seed, threads=threads, numerics=numerics)


def _use_inline_plots_in_notebooks() -> None:
    """In a Jupyter kernel started with MPLBACKEND=Agg (as headless CI does), `plt.show()`
    would show nothing and leave no output for nbval to compare: switch to the inline backend.
    Any other backend the learner chose (widget, qt, ...) is left alone."""
    try:
        import matplotlib
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):  # a terminal or a script: nothing to do
        return
    if matplotlib.get_backend().lower() == "agg":
        shell.run_line_magic("matplotlib", "inline")


def _set_plot_style() -> None:
    try:
        import matplotlib as mpl
    except ImportError:  # plotting is optional for the maths modules
        return
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 80,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
            "savefig.bbox": "tight",
        }
    )
