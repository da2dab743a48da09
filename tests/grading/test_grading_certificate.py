"""Certificates: issued only when every module passes, verified by re-grading; a signed record
that was edited fails; an unsigned one verifies with a warning."""
import json
import shutil

import pytest

from bncourse.cli import main
from bncourse.grading import certificate, registry
from bncourse.grading.certificate import build_record, check_record, sign
from bncourse.grading.grade import GradeReport, NotebookReport
from bncourse.grading.results import CheckResult, ExerciseResult

from grading_helpers import SOLUTIONS, folder_hashes

KEY = b"instructor secret"


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    """A signed certificate for a copy of the solutions (one real grading run)."""
    base = tmp_path_factory.mktemp("cert")
    folder = base / "work"
    shutil.copytree(SOLUTIONS, folder)
    key_file = base / "key"
    key_file.write_bytes(KEY + b"\n")
    before = folder_hashes(folder)
    status = main(["certificate", "--name", "Ada Lovelace", "--path", str(folder),
                   "--out", str(base / "out"), "--key-file", str(key_file)])
    assert status == 0
    assert folder_hashes(folder) == before
    records = list((base / "out").glob("*.json"))
    assert len(records) == 1 and list((base / "out").glob("*.pdf"))
    return base, folder, key_file, records[0]


def test_record_fields(issued):
    _, folder, _, record_path = issued
    record = json.loads(record_path.read_text())
    assert record["name"] == "Ada Lovelace" and record["signed"] is True
    assert sorted(record["modules"]) == list(registry.REQUIRED_MODULES)
    assert {f["path"] for f in record["files"]} == set(registry.NOTEBOOKS.values())
    assert all(len(f["sha256"]) == 64 for f in record["files"])
    assert record["signature"] == sign(record, KEY)


def test_verify_end_to_end_with_key(issued, capsys):
    _, _, key_file, record_path = issued
    assert main(["verify", str(record_path), "--key-file", str(key_file)]) == 0
    assert "VERIFIED: Ada Lovelace" in capsys.readouterr().out


def test_changed_notebook_fails_verification(issued, tmp_path, capsys):
    _, folder, key_file, record_path = issued
    copy = tmp_path / "work"
    shutil.copytree(folder, copy)
    path = copy / registry.NOTEBOOKS["03"]
    path.write_text(path.read_text().replace("(2 * h)", "(2.0 * h)"))
    assert main(["verify", str(record_path), "--key-file", str(key_file),
                 "--path", str(copy)]) == 1
    assert "SHA-256 differs" in capsys.readouterr().out


def _fake_report(folder, points=None):
    """A GradeReport as if every module scored `points` (default: full marks), no grading."""
    notebooks = []
    for module, filename in registry.NOTEBOOKS.items():
        result = ExerciseResult(f"{module}.x", [CheckResult("c", 1, 1) for _ in range(5)])
        if points is not None:
            result.checks = [CheckResult("c", int(i < points), 1) for i in range(5)]
        notebooks.append(NotebookReport(str(folder / filename), "0" * 64, module, [result]))
    return GradeReport(notebooks, seed=0)


@pytest.fixture
def fake_grading(monkeypatch, tmp_path):
    """Verification without re-grading: files hash to zeros and re-grade to full marks."""
    for filename in registry.NOTEBOOKS.values():
        (tmp_path / filename).write_text("{}")
    report = _fake_report(tmp_path)
    by_path = {nb.path: nb for nb in report.notebooks}
    monkeypatch.setattr(certificate, "grade_notebook", lambda path, limits: by_path[str(path)])
    monkeypatch.setattr(certificate, "file_sha256", lambda path: "0" * 64)
    return tmp_path, report


@pytest.mark.parametrize("field, value", [("name", "Mallory"), ("date", "2020-01-01"),
                                          ("course_version", "9.9"), ("signed", False)])
def test_edited_signed_record_fails(fake_grading, field, value):
    folder, report = fake_grading
    record = build_record("Ada", folder, report, KEY)
    assert check_record(record, KEY, folder)[0] == []
    record[field] = value
    failures, _ = check_record(record, KEY, folder)
    assert failures, field


def test_wrong_key_fails(fake_grading):
    folder, report = fake_grading
    record = build_record("Ada", folder, report, KEY)
    failures, _ = check_record(record, b"another key", folder)
    assert any("signature does not match" in f for f in failures)


def test_unsigned_record_verifies_with_a_warning(fake_grading):
    folder, report = fake_grading
    record = build_record("Ada", folder, report, None)
    assert record["signed"] is False and record["signature"] is None
    failures, warnings = check_record(record, None, folder)
    assert failures == []
    assert warnings == ["unsigned: self-issued, not signed by an instructor"]
    failures, _ = check_record(record, KEY, folder)
    assert any("not signed" in f for f in failures)


def test_edited_scores_fail_even_unsigned(fake_grading):
    folder, report = fake_grading
    record = build_record("Ada", folder, _fake_report(folder, points=4), None)
    record["modules"]["04"]["points"] = 3  # claims less than the re-grade finds: mismatch
    failures, _ = check_record(record, None, folder)
    assert any("module 04: re-graded 5/5" in f for f in failures)


@pytest.mark.parametrize("score", [0.5, 0.99, "100%", None])
def test_an_edited_score_fails_even_unsigned(fake_grading, score):
    folder, report = fake_grading
    record = build_record("Ada", folder, report, None)  # honest: 100% everywhere
    assert check_record(record, None, folder)[0] == []
    record["modules"]["03"]["score"] = score  # points and max_points left as they were
    failures, _ = check_record(record, None, folder)
    assert any(f.startswith("module 03: re-graded 100%, the record says") for f in failures)


def test_no_certificate_when_a_module_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    report = _fake_report(tmp_path / "work", points=3)  # 60% < 80%
    monkeypatch.setattr(certificate, "grade_path", lambda *args, **kwargs: report)
    status = certificate.issue("Bob", tmp_path / "work", tmp_path / "out")
    out = capsys.readouterr().out
    assert status == 1 and not (tmp_path / "out").exists()
    assert "module 02: 60%, below the pass mark of 80%" in out


def test_no_certificate_when_a_module_is_missing(tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    report = _fake_report(tmp_path / "work")
    report.notebooks = report.notebooks[:3]
    monkeypatch.setattr(certificate, "grade_path", lambda *args, **kwargs: report)
    assert certificate.issue("Bob", tmp_path / "work", tmp_path / "out") == 1
    assert "module 05: missing" in capsys.readouterr().out


def test_key_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(certificate.KEY_ENV, "from-env")
    assert certificate.load_key(None) == b"from-env"
    (tmp_path / "k").write_bytes(b"  from-file \n")
    assert certificate.load_key(tmp_path / "k") == b"from-file"
    with pytest.raises(ValueError, match="no such file"):
        certificate.load_key(tmp_path / "missing")


def test_verify_rejects_a_record_that_is_not_json(tmp_path, capsys):
    bad = tmp_path / "record.json"
    bad.write_text("{ edited")
    assert main(["verify", str(bad)]) == 1
    assert "NOT VERIFIED" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "missing.json")]) == 2
