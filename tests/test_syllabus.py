from pathlib import Path

import pytest

from bncourse.syllabus import LESSONS, markdown_table, syllabus

ROOT = Path(__file__).resolve().parents[1]


def test_every_lesson_numbered_in_order():
    assert [lesson.number for lesson in LESSONS] == [f"{i:02d}" for i in range(len(LESSONS))]


def test_status_follows_the_files(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "exercises").mkdir()
    (tmp_path / "notebooks" / "02_forward.ipynb").write_text("{}")
    rows = {lesson.number: lesson for lesson in syllabus(tmp_path)}
    assert rows["02"].status == "ready" and rows["02"].exercise is None
    assert rows["03"].status == "planned"


def test_readme_shows_the_syllabus_table():
    assert markdown_table(ROOT) in (ROOT / "README.md").read_text(encoding="utf-8")


def test_root_must_be_the_course_folder(tmp_path):
    with pytest.raises(ValueError, match="root must be the course folder"):
        syllabus(tmp_path)
