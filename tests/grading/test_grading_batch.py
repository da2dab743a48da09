"""An instructor's batch: `bncourse grade CLASS/` grades each learner's folder in its own worker,
writes the gradebook (CSV + JSON), and with a key one verifiable credential per learner who
passed. A submission that hangs, crashes or is corrupted costs only its own time."""
import csv
import importlib
import json
import shutil
import time

import pytest

from bncourse.cli import main
from bncourse.grading import batch, registry
from bncourse.grading.certificate import check_record, keygen, load_public_key
from bncourse.grading.grade import GradeReport, NotebookReport
from bncourse.grading.results import CheckResult, ExerciseResult

from grading_helpers import LIMITS, SETUP, SOLUTIONS, folder_hashes, write_notebook

FORWARD = registry.NOTEBOOKS["02"]


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """Four learners graded once through the command: a good one, one whose code hangs, one
    whose process crashes, one with a corrupted notebook."""
    base = tmp_path_factory.mktemp("class")
    klass = base / "class"
    (klass / "ada").mkdir(parents=True)
    shutil.copy(SOLUTIONS / FORWARD, klass / "ada" / FORWARD)
    (klass / "hang").mkdir()
    write_notebook(klass / "hang", FORWARD, [SETUP, "while True:\n    pass"])
    (klass / "crash").mkdir()
    write_notebook(klass / "crash", FORWARD, [SETUP, "import os\nos.kill(os.getpid(), 9)"])
    (klass / "broken").mkdir()
    (klass / "broken" / FORWARD).write_text('{"cells": [')
    before = folder_hashes(klass)
    start = time.perf_counter()
    status = main(["grade", str(klass), "--out", str(base / "book"), "--workers", "2",
                   "--timeout", str(LIMITS.timeout), "--memory-mb", "2048", "--seed", "5"])
    seconds = time.perf_counter() - start
    assert folder_hashes(klass) == before, "grading wrote to a learner's folder"
    return base, status, seconds


def test_the_batch_command_writes_a_gradebook(graded_class):
    base, status, _ = graded_class
    assert status == 0
    with open(base / "book" / "gradebook.csv", newline="") as f:
        rows = {row["learner"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == ["ada", "broken", "crash", "hang"]
    points, max_points = rows["ada"]["02 points"].split("/")
    assert points == max_points != "0" and rows["ada"]["02 score"] == "1.0000"
    assert rows["ada"]["passed"] == "no" and "module 03: missing" in rows["ada"]["problems"]
    assert rows["hang"]["02 points"].startswith("0/")
    assert rows["crash"]["02 points"].startswith("0/")
    assert "corrupted" in rows["broken"]["problems"]
    data = json.loads((base / "book" / "gradebook.json").read_text())
    assert [e["learner"] for e in data["learners"]] == ["ada", "broken", "crash", "hang"]
    assert all(e["seed"] == 5 for e in data["learners"])
    ada = data["learners"][0]
    assert ada["modules"]["02"]["passed"] is True and ada["report"]["notebooks"][0]["sha256"]


def test_a_hanging_submission_costs_only_its_own_time_limit(graded_class):
    base, _, seconds = graded_class
    data = json.loads((base / "book" / "gradebook.json").read_text())
    by_name = {e["learner"]: e for e in data["learners"]}
    hang = by_name["hang"]
    errors = " ".join(hang["report"]["notebooks"][0]["errors"])
    assert "time limit" in errors
    crash = by_name["crash"]
    assert "killed by SIGKILL" in " ".join(crash["report"]["notebooks"][0]["errors"])
    # The others are not slowed by the hang: each takes what it takes alone.
    assert by_name["ada"]["seconds"] < 60 and by_name["broken"]["seconds"] < 30
    total = sum(e["seconds"] for e in data["learners"])
    assert seconds < total + 30  # in parallel: the wall time is not the sum plus waiting
    print(f"batch of 4: {seconds:.1f} s wall, per learner "
          + ", ".join(f"{e['learner']} {e['seconds']} s" for e in data["learners"]))


def _fake_entries(klass, passing=("ada", "zoë"), failing=("bob",)):
    entries = []
    for learner in sorted(passing + failing):
        points = 5 if learner in passing else 2
        notebooks = [NotebookReport(str(klass / learner / registry.NOTEBOOKS[m]), "ab" * 32, m,
                                    [ExerciseResult(f"{m}.x", [CheckResult("c", int(i < points),
                                                                           1)
                                                               for i in range(5)])])
                     for m in registry.REQUIRED_MODULES]
        report = GradeReport(notebooks, seed=11)
        problems = [] if learner in passing else ["module 02: 40%, below the pass mark"]
        entries.append({"learner": learner, "folder": str(klass / learner), "seed": 11,
                        "report": report, "error": None, "problems": problems, "seconds": 1.0})
    return entries


def test_with_a_key_one_credential_per_passing_learner(tmp_path, monkeypatch, capsys):
    private_path, public_path = keygen(tmp_path / "keys")
    klass = tmp_path / "class"
    for learner in ("ada", "bob", "zoë"):
        (klass / learner).mkdir(parents=True)
        (klass / learner / FORWARD).write_text("{}")
    events = []

    def fake_grade_class(path, limits, seed, workers, on_done):
        events.append("graded")
        return _fake_entries(klass)

    keys = importlib.import_module("bncourse.grading.certificate.keys")
    real_load = keys.load_private_key
    monkeypatch.setattr(batch, "grade_class", fake_grade_class)
    monkeypatch.setattr(keys, "load_private_key",
                        lambda path: events.append("key read") or real_load(path))
    status = batch.main(klass, tmp_path / "book", LIMITS, key_file=private_path)
    assert status == 0 and events == ["graded", "key read"]
    credentials = sorted((tmp_path / "book" / "credentials").glob("*.json"))
    assert len(credentials) == 2 and len(list(credentials[0].parent.glob("*.pdf"))) == 2
    public = load_public_key(public_path)
    names = set()
    for path in credentials:
        record = json.loads(path.read_text())
        assert check_record(record, public) == ([], [])
        names.add(record["credentialSubject"]["identifier"][0]["identityHash"])
    assert names == {"ada", "zoë"}
    rows = list(csv.DictReader(open(tmp_path / "book" / "gradebook.csv", newline="")))
    assert [(r["learner"], r["passed"], bool(r["credential"])) for r in rows] == \
        [("ada", "yes", True), ("bob", "no", False), ("zoë", "yes", True)]
    assert "2 of 3 learners passed" in capsys.readouterr().out


def test_is_batch(tmp_path):
    assert not batch.is_batch(tmp_path)  # empty
    (tmp_path / "ada").mkdir()
    (tmp_path / "ada" / FORWARD).write_text("{}")
    assert batch.is_batch(tmp_path)
    assert [p.name for p in batch.learner_folders(tmp_path)] == ["ada"]
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    assert not batch.is_batch(tmp_path)  # the course's checkout: grade its notebooks
    (tmp_path / "pyproject.toml").unlink()
    (tmp_path / FORWARD).write_text("{}")
    assert not batch.is_batch(tmp_path)  # a learner's own folder
    assert not batch.is_batch(tmp_path / FORWARD)


def test_batch_usage_errors(tmp_path, capsys):
    (tmp_path / "ada").mkdir()
    (tmp_path / "ada" / FORWARD).write_text("{}")
    assert main(["grade", str(tmp_path), "--key-file", str(tmp_path / "no.pem")]) == 2
    assert "--key-file" in capsys.readouterr().err
    assert main(["grade", str(tmp_path), "--workers", "0"]) == 2
    one = tmp_path / "ada" / FORWARD
    assert main(["grade", str(one), "--out", str(tmp_path / "book")]) == 2
    assert "for a folder of learners' folders" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no learners' folders"):
        batch.grade_class(tmp_path / "ada")
