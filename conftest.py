"""Repository-wide pytest hooks: MKL's portable branch, a per-file time summary (CI prints it;
lessons have budgets)."""
import os
from collections import defaultdict

# MKL fixes its code branch at its first call in a process: set it before any test imports
# torch, as `bncourse.setup()` does in every notebook, so test processes and the notebooks'
# kernels (which inherit this environment) compute the same bits on Intel and AMD CPUs.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

_durations: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    # Runs in the controller for xdist workers' reports too; sum setup, call and teardown.
    _durations[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _durations:
        return
    terminalreporter.section("time per file (s)")
    for path, seconds in sorted(_durations.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_durations.values()):8.1f}  total (summed over workers)")
