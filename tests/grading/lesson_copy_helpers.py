"""Helpers for the module 02-05 grading tests: a lesson's code cells, a module's score."""
import json

import bncourse
from bncourse.grading import registry
from grading_helpers import ROOT


def lesson_namespace(notebook, cells):
    """Execute the given code cells (by index) of notebooks/<notebook>; return their names."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    namespace = {"__name__": "lesson"}
    exec("import numpy as np\nimport torch\nimport torch.nn.functional as F", namespace)
    for index in cells:
        cell = nb["cells"][index]
        assert cell["cell_type"] == "code", (notebook, index)
        exec(compile("".join(cell["source"]), f"{notebook}[{index}]", "exec"), namespace)
    return namespace


def module_score(module, objects, seed=0):
    """The module's score (points / max points) for {exercise name: object}; missing ones 0."""
    points = max_points = 0
    for exercise in registry.module_exercises(module):
        max_points += exercise.max_points
        if exercise.name in objects:
            report = bncourse.check(exercise.id, objects[exercise.name], quiet=True, seed=seed)
            points += sum(c.points for c in report.result.checks)
    return points / max_points
