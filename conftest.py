"""Repository-wide pytest hooks: a per-file time summary (CI prints it; lessons have budgets)."""
from collections import defaultdict

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
