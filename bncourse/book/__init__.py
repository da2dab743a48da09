"""The course as a static website (`bncourse book`): Sphinx with myst-nb renders the committed
notebooks (nothing executes) and sphinx-book-theme lays them out; MathJax, scripts, stylesheets
and fonts are local, so the site reads offline and can be published as is (e.g. GitHub Pages).

Not imported by `import bncourse`; needs the `book` extra (`pip install -e '.[book]'`).
"""
from bncourse.book.build import BookBuild, build_book, landing_page, site_size, stage_sources

__all__ = ["BookBuild", "build_book", "landing_page", "site_size", "stage_sources"]
