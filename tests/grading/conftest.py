"""Fixtures for the grading tests."""
import pytest

from grading_helpers import SOLUTIONS, solution_cells


@pytest.fixture(scope="session")
def solution_objects():
    """Every solution's object by exercise name, from executing the solution notebooks."""
    namespace = {"__name__": "solutions"}
    for filename in sorted(p.name for p in SOLUTIONS.glob("*.ipynb")):
        for source in solution_cells(filename):
            exec(compile(source, filename, "exec"), namespace)
    return namespace
