"""Reproducible set-up for every notebook, and the environment report (lesson 00).

`setup()` is the first code cell of every notebook: it seeds Python, NumPy and torch, fixes the
number of threads (float32 reductions depend on it), and sets one plot style.
"""
from __future__ import annotations

import os
import platform
import random
import sys
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

    def __str__(self) -> str:
        # Versions are left out on purpose: this line is printed by the first cell of every
        # notebook and compared by nbval, so it must not change when a package is upgraded.
        return f"bncourse setup: seed={self.seed}, threads={self.threads}, device={self.device}"

    def __repr__(self) -> str:
        return str(self)

    def details(self) -> str:
        """Versions too, for lesson 00 and bug reports (varies between installs)."""
        return f"{self}\n  python {self.python}, numpy {self.numpy}, torch {self.torch}"


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


def environment_report(seed: int = 0, threads: int | None = None) -> EnvironmentReport:
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
    )


def setup(seed: int = 0, threads: int = 1) -> EnvironmentReport:
    """Seed everything, fix the thread count, set the plot style; return an environment report.

    Args:
        seed: seed for Python, NumPy and torch.
        threads: torch intra-op threads. One thread makes float32 results repeatable from run
            to run on the same machine, which strict nbval needs.
    """
    import torch

    if not isinstance(threads, int) or isinstance(threads, bool):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    seed_everything(seed)
    torch.set_num_threads(threads)
    # Progress bars are noise in executed notebooks under test; learners still see them.
    if os.environ.get("PYTEST_CURRENT_TEST") or "pytest" in sys.modules:
        os.environ.setdefault("TQDM_DISABLE", "1")
    _use_inline_plots_in_notebooks()
    _set_plot_style()  # after the backend: activating the inline backend applies its own rc
    return environment_report(seed=seed, threads=threads)


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
