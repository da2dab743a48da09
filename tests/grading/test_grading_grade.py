"""`bncourse grade`: solutions score 100%, stubs 0%, the reports, the exit codes, and learner
files left exactly as they were."""
import json
import subprocess
import sys

import pytest

from bncourse.cli import main
from bncourse.grading import registry
from bncourse.grading import assign
from bncourse.grading.assign import out_of_date, strip_solutions
from bncourse.grading.grade import grade_path

from grading_helpers import (EXERCISES, GOOD_STATS, ROOT, SOLUTIONS, folder_hashes,
                             write_notebook)


@pytest.fixture(scope="module")
def solutions_report():
    before = folder_hashes(SOLUTIONS)
    report = grade_path(SOLUTIONS, seed=1234)
    assert folder_hashes(SOLUTIONS) == before, "grading wrote to a learner's folder"
    return report


def test_solutions_score_100_percent(solutions_report):
    modules = solutions_report.modules()
    assert sorted(modules) == list(registry.REQUIRED_MODULES)
    for module, summary in modules.items():
        assert summary["points"] == summary["max_points"] > 0, solutions_report.text()
        assert summary["passed"]
    for nb in solutions_report.notebooks:
        assert nb.errors == [], nb.errors


def test_json_report_has_checks_and_hashes(solutions_report):
    data = json.loads(json.dumps(solutions_report.to_json()))
    assert data["pass_mark"] == registry.PASS_MARK and data["seed"] == 1234
    nb = data["notebooks"][0]
    assert len(nb["sha256"]) == 64
    check = nb["exercises"][0]["checks"][0]
    assert set(check) >= {"name", "points", "max_points", "passed", "message"}


def test_one_worker_or_two_give_the_same_report(solutions_report):
    """Notebooks run side by side, but every check is scored in order in the grader's process:
    the report (the default is two workers) is the same with one."""
    picked = [nb for nb in solutions_report.notebooks if nb.module in ("02", "05", "07")]
    folder = SOLUTIONS
    one = grade_path(folder, seed=1234, modules=("02", "05", "07"), workers=1)
    assert [nb.to_json() for nb in one.notebooks] == [nb.to_json() for nb in picked]


@pytest.mark.parametrize("workers, error, message", [
    (0, ValueError, "workers must be at least 1, got 0"),
    (1.5, TypeError, "workers must be an int, got float"),
    (True, TypeError, "workers must be an int, got bool"),
])
def test_workers_is_checked(workers, error, message):
    with pytest.raises(error, match=message):
        grade_path(SOLUTIONS, workers=workers)


def test_stubs_score_0_percent():
    before = folder_hashes(EXERCISES)
    report = grade_path(EXERCISES, seed=1)
    assert folder_hashes(EXERCISES) == before
    assert sorted(report.modules()) == list(registry.REQUIRED_MODULES)
    for nb in report.notebooks:
        assert nb.points == 0 and nb.max_points > 0
        for exercise in nb.exercises:
            assert all(c.message == "not implemented yet" for c in exercise.checks)


def test_exercises_are_generated_from_solutions():
    problems = out_of_date(SOLUTIONS, EXERCISES)
    assert not problems, ("exercises/ is out of date; run `python -m bncourse.grading.assign`: "
                          + "; ".join(problems))


@pytest.mark.parametrize("module", registry.REQUIRED_MODULES)
def test_every_stub_notebook_exists_without_solutions(module):
    text = (EXERCISES / registry.NOTEBOOKS[module]).read_text()
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "NotImplementedError" in text


def test_exercise_notebooks_are_committed_executed():
    for path in EXERCISES.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] is not None for c in code), path.name


def test_strip_solutions_keeps_indentation_and_the_rest():
    source = ("def f(x):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    return x\n"
              "    ### END SOLUTION\n\nprint(1)")
    stripped = strip_solutions(source)
    assert stripped == ('def f(x):\n    """Doc."""\n    # YOUR CODE HERE\n'
                        '    raise NotImplementedError("replace this line with your code")\n'
                        '\nprint(1)')


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_strip_solutions_rejects_unbalanced_markers(source):
    with pytest.raises(ValueError, match="SOLUTION"):
        strip_solutions(source)


def test_cli_exit_status(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "missing.ipynb")]) == 2
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["grade", str(tmp_path / "notes.txt")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["grade", str(empty)]) == 2
    assert "bncourse grade:" in capsys.readouterr().err


@pytest.mark.parametrize("filename, metadata, message", [
    ("99_other.ipynb", None, "module '99' has no graded exercises"),
    ("homework.ipynb", None, "it has no bncourse metadata and its name does not start with a "
                             "lesson number: another course's notebook?"),
    ("01_why_normalize.ipynb", "01", "module '01' has no graded exercises"),
])
def test_another_courses_notebook_says_so_and_exits_non_zero(tmp_path, capsys, filename,
                                                             metadata, message):
    write_notebook(tmp_path, filename, ["x = 1"], module=metadata)
    assert main(["grade", str(tmp_path / filename)]) == 2
    err = capsys.readouterr().err
    assert f"{filename} is not an exercise notebook of this course ({message}" in err
    assert "graded modules: 02, 03" in err


@pytest.mark.parametrize("content", ["{not json", '{"cells": [', "{}", "\udcff"])
def test_a_corrupted_notebook_is_reported_as_corrupted(tmp_path, capsys, content):
    path = tmp_path / registry.NOTEBOOKS["03"]
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert main(["grade", str(path)]) == 2
    assert f"{path.name} is corrupted:" in capsys.readouterr().err
    report = grade_path(tmp_path, seed=0)  # in a folder: reported, not skipped
    [nb] = report.notebooks
    assert nb.module == "03" and nb.errors[0].startswith("cannot be graded: corrupted")
    assert report.skipped == []


def test_memory_too_small_for_the_grader_is_the_graders_error(tmp_path, capsys):
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb", [GOOD_STATS])
    before = folder_hashes(tmp_path)
    assert main(["grade", str(path), "--memory-mb", "300"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("bncourse grade: grader error: --memory-mb 300 is too small for the "
                          "grader itself to start")
    assert "not the learner's fault" in err
    assert folder_hashes(tmp_path) == before


def test_cli_grades_a_failing_notebook_with_status_0_and_json(tmp_path):
    path = write_notebook(tmp_path, "02_forward_exercises.ipynb",
                          ["def batch_statistics(x):\n    return 1, 2"])
    done = subprocess.run([sys.executable, "-m", "bncourse", "grade", str(path), "--json",
                           "--timeout", "5", "--seed", "3"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    module = data["modules"]["02"]
    assert module["points"] == 0 and module["passed"] is False
    messages = [c["message"] for e in data["notebooks"][0]["exercises"] for c in e["checks"]]
    assert "`batchnorm_forward` is not defined: run its cell first" in messages


def test_a_damaged_exercise_notebook_in_a_folder_is_reported_not_skipped(tmp_path):
    (tmp_path / registry.NOTEBOOKS["03"]).write_text('{"cells": [')  # truncated JSON
    (tmp_path / "notes.ipynb").write_text("{}")  # no module, and no cells: corrupted too
    write_notebook(tmp_path, "99_mine.ipynb", ["x = 1"])  # another notebook: skipped
    report = grade_path(tmp_path, seed=0)
    [damaged] = report.notebooks
    assert damaged.module == "03" and damaged.max_points == 0
    assert damaged.errors and damaged.errors[0].startswith("cannot be graded: corrupted")
    assert "03" not in report.modules()
    text = report.text()
    assert "cannot be graded: corrupted" in text
    assert [p.rsplit("/", 1)[-1] for p in report.skipped] == ["99_mine.ipynb", "notes.ipynb"]
    assert "skipped (corrupted, not a readable notebook): " in text
    assert "skipped (not an exercise notebook of a graded module): " in text


def test_assign_only_regenerates_the_matching_solutions(tmp_path):
    written = assign.generate(SOLUTIONS, tmp_path, execute=False, only="03_*")
    assert [p.name for p in written] == ["03_backward_exercises.ipynb"]
    with pytest.raises(ValueError, match="no notebook matches '99_\\*'"):
        assign.generate(SOLUTIONS, tmp_path, execute=False, only="99_*")


def test_assign_never_overwrites_a_learners_filled_in_exercise(tmp_path, capsys):
    [target] = assign.generate(SOLUTIONS, tmp_path, execute=False, only="03_*")
    assign.generate(SOLUTIONS, tmp_path, execute=False, only="03_*")  # untouched: regenerated
    nb = json.loads(target.read_text())
    stub = assign.STUB[1]
    cell = next(c for c in nb["cells"] if stub in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).replace(stub, "return 42")
    target.write_text(json.dumps(nb))
    learner = target.read_bytes()
    with pytest.raises(ValueError, match="not overwriting exercises a learner has filled in"):
        assign.generate(SOLUTIONS, tmp_path, execute=False, only="03_*")
    assert target.read_bytes() == learner
    assert main(["assign", "--solutions", str(SOLUTIONS), "--exercises", str(tmp_path),
                 "--no-execute"]) == 2
    assert "use --force" in capsys.readouterr().err and target.read_bytes() == learner
    assign.generate(SOLUTIONS, tmp_path, execute=False, only="03_*", force=True)
    assert (tmp_path / (target.name + ".bak")).read_bytes() == learner
    assert target.read_bytes() != learner


def test_filled_in_is_false_for_an_authors_stale_stubs():
    generated = {"cells": [{"cell_type": "code", "source": "def f():\n    " + assign.STUB[1]}]}
    stale = {"cells": [{"cell_type": "code", "source": "def g():\n    " + assign.STUB[1]}]}
    learner = {"cells": [{"cell_type": "code", "source": "def f():\n    return 1"}]}
    assert not assign.filled_in(stale, generated) and not assign.filled_in(generated, generated)
    assert assign.filled_in(learner, generated)


def test_cells_tagged_not_graded_are_not_run_by_the_grader():
    from bncourse.grading.notebook import NOT_GRADED_TAG, code_cells

    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "a = 1"},
                    {"cell_type": "code", "metadata": {"tags": [NOT_GRADED_TAG]},
                     "source": "import bncourse.nn"}]}
    assert [source for _, source in code_cells(nb)] == ["a = 1"]
