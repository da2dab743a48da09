"""Sphinx configuration of the course website (`bncourse book`). Not imported by the package:
Sphinx runs this file with the staging folder that `bncourse.book.build` prepares as its sources.

Pages come from the committed, executed notebooks: nothing executes (`nb_execution_mode = "off"`),
so every output, plot and assert reads as CI verified it. Nothing is fetched when a page is read:
the theme's scripts, stylesheets and fonts are its own local copies and MathJax is copied from
a pip-installed distribution (`bncourse.book.mathjax`).
"""
from bncourse._version import __version__
from bncourse.book.mathjax import MATHJAX_ENTRY, vendor_mathjax

project = "Deep Dive into Batch Normalization"
author = "the bncourse authors"
copyright = "the bncourse authors, MIT licence"
release = version = __version__

extensions = ["myst_nb"]
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}  # no widget outputs; otherwise myst-nb links require.js from a CDN
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
exclude_patterns = ["**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]

mathjax_path = f"mathjax/{MATHJAX_ENTRY}"  # relative to _static/: the local copy

html_theme = "sphinx_book_theme"
html_title = "Deep Dive into Batch Normalization"
html_copy_source = False  # the .ipynb files are in the repository; the site stays small
html_show_sourcelink = False
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "navbar_persistent": [],
}


def _copy_mathjax(app, exc):
    if exc is None:
        vendor_mathjax(app.outdir + "/_static" if isinstance(app.outdir, str)
                       else app.outdir / "_static")


def setup(app):
    app.connect("build-finished", _copy_mathjax)
