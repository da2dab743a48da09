"""Build the course website: `build_book(root, out)` (the `bncourse book` command).

The sources are staged in a temporary folder: a landing page with the syllabus (the README's
table, from `bncourse.syllabus`), copies of `notebooks/*.ipynb` and of the exercise stubs in
`exercises/*.ipynb` (each with a note that it is a read-only copy). `solutions/` is never read.
Sphinx with myst-nb then renders the committed outputs; nothing executes.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bncourse.syllabus import markdown_table, syllabus

__all__ = ["BookBuild", "landing_page", "stage_sources", "build_book", "site_size"]

CONF_DIR = Path(__file__).resolve().parent  # holds conf.py
BOOK_SUBDIRS = ("notebooks", "exercises")  # never solutions/


@dataclass
class BookBuild:
    """What `build_book` made: the site folder, its pages (source names without suffix, e.g.
    "notebooks/02_forward"), the build time in seconds (wall clock, and this process's CPU time,
    which other load on the machine does not inflate; with `jobs` > 1 it leaves out the worker
    processes) and Sphinx's warnings."""

    out: Path
    pages: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    cpu_seconds: float | None = None

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def _check_root(root) -> Path:
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    root = Path(root)
    if not (root / "notebooks").is_dir():
        raise ValueError(f"root must be the course folder (holding notebooks/), got {str(root)!r}")
    return root


def landing_page(root) -> str:
    """The landing page (MyST Markdown): what the site is, the syllabus table with links to the
    pages, and the tables of contents of lessons and exercises."""
    root = _check_root(root)
    lessons = syllabus(root)
    table = markdown_table(root)
    for lesson in lessons:  # the README's table, with links to the pages the site has
        if lesson.status == "ready":
            table = table.replace(f"| {lesson.topic} |",
                                  f"| [{lesson.topic}](notebooks/{lesson.notebook}) |", 1)
        if lesson.exercise:
            table = table.replace(f"`exercises/{lesson.exercise}`",
                                  f"[`exercises/{lesson.exercise}`](exercises/{lesson.exercise})", 1)
    ready = [f"notebooks/{lesson.stem}" for lesson in lessons if lesson.status == "ready"]
    graded = [f"exercises/{Path(lesson.exercise).stem}" for lesson in lessons if lesson.exercise]
    return "\n".join([
        "# Deep Dive into Batch Normalization",
        "",
        "A course on batch normalization (Ioffe & Szegedy, 2015): the maths by hand in NumPy, a",
        "torch-compatible module, inference and deployment, why it works, case studies and variants.",
        "These pages show every lesson with its outputs and plots exactly as they were executed and",
        "checked by the course's tests; nothing runs here. To run the code and do the graded",
        "exercises, install the course and open it with `bncourse lab` (see the README).",
        "",
        "## Syllabus",
        "",
        table,
        "Exercise pages are read-only copies of the exercise notebooks, without their solutions.",
        "",
        "```{toctree}", ":caption: Lessons", ":maxdepth: 1", "", *ready, "```",
        "",
        *(["```{toctree}", ":caption: Exercises (read-only)", ":maxdepth: 1", "", *graded, "```",
           ""] if graded else []),
    ])


def _read_only_note(name: str) -> dict:
    text = (f"```{{note}}\nA read-only copy of the exercise notebook `exercises/{name}`, without its "
            "solutions. To do the exercise, open the course with `bncourse lab`, fill in the "
            f"marked cells and check your work with `bncourse grade exercises/{name}`.\n```")
    return {"cell_type": "markdown", "id": "bncourse-read-only-note", "metadata": {}, "source": text}


def stage_sources(root, stage) -> list[str]:
    """Write the site's sources into the folder `stage`; returns the page names."""
    root = _check_root(root)
    stage = Path(stage)
    pages = ["index"]
    (stage / "index.md").write_text(landing_page(root), encoding="utf-8")
    for sub in BOOK_SUBDIRS:
        (stage / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((root / sub).glob("*.ipynb")):
            if sub == "exercises":
                nb = json.loads(path.read_text(encoding="utf-8"))
                cells = nb["cells"]
                # after the title cell, so the page keeps the notebook's title
                at = 1 if cells and cells[0]["cell_type"] == "markdown" and "".join(
                    cells[0]["source"]).lstrip().startswith("#") else 0
                cells.insert(at, _read_only_note(path.name))
                (stage / sub / path.name).write_text(json.dumps(nb), encoding="utf-8")
            else:
                shutil.copyfile(path, stage / sub / path.name)
            pages.append(f"{sub}/{path.stem}")
    return pages


def site_size(out) -> int:
    """Bytes in all the files under `out`."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())


def build_book(root, out, jobs: int = 1) -> BookBuild:
    """Build the website of the course folder `root` into `out` (HTML; replaced if present).

    Raises ValueError for a bad `root`, `out` or `jobs`, RuntimeError when the `book` extra is
    missing or Sphinx fails."""
    root = _check_root(root)
    if not isinstance(out, (str, Path)):
        raise TypeError(f"out must be a path, got {type(out).__name__}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    out = Path(out).resolve()
    if out == root.resolve() or root.resolve().is_relative_to(out) or out.is_relative_to(
            (root / "notebooks").resolve()):
        raise ValueError(f"out must be a folder of its own, not the course folder or a "
                         f"parent or a source folder, got {str(out)!r}")
    try:
        from sphinx.application import Sphinx
        import myst_nb  # noqa: F401  (checked here to name the fix)
        import sphinx_book_theme  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the website needs the book extra ({exc}). "
                           "Fix: pip install -e '.[book]'") from exc
    from bncourse.book.mathjax import mathjax_source

    mathjax_source()  # fail before building when MathJax is missing
    start, start_cpu = time.perf_counter(), time.process_time()
    if out.exists():
        shutil.rmtree(out)
    warnings = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="bncourse-book-") as tmp:
        stage = Path(tmp) / "src"
        stage.mkdir()
        pages = stage_sources(root, stage)
        app = Sphinx(str(stage), str(CONF_DIR), str(out), str(Path(tmp) / "doctrees"), "html",
                     status=None, warning=warnings, freshenv=True, parallel=jobs)
        app.build()
        if app.statuscode:
            raise RuntimeError(f"Sphinx failed:\n{warnings.getvalue()}")
    (out / ".buildinfo").unlink(missing_ok=True)
    for template in (out / "_static").glob("*macros.html"):  # the themes' Jinja macros, unused
        template.unlink()
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ as is
    lines = [line for line in warnings.getvalue().splitlines() if line.strip()]
    return BookBuild(out, pages, time.perf_counter() - start, lines,
                     time.process_time() - start_cpu)
