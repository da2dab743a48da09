"""MathJax for the course website, from a copy installed by pip: nothing is fetched at build time
or when a page is read.

The `sphinx-mathjax-offline` package (PyPI) ships MathJax 3 (its components, TeX extensions and
woff fonts). `vendor_mathjax` copies the parts a page can load into the site's `_static/mathjax/`,
and the site's pages load `_static/mathjax/tex-chtml.js` (set in the book's `conf.py`).
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

__all__ = ["MATHJAX_ENTRY", "mathjax_source", "vendor_mathjax"]

# The component every page loads: TeX input, CommonHTML output, the menu and assistive MathML.
MATHJAX_ENTRY = "tex-chtml.js"
# The package's other combined bundles are alternatives to tex-chtml.js that no page loads;
# node-main.js is for Node, not browsers. Everything else (TeX extensions loaded on demand, fonts,
# the menu's renderers and the speech rules of its accessibility explorer) is copied.
_UNUSED = {"tex-chtml-full.js", "tex-chtml-full-speech.js", "tex-mml-chtml.js", "tex-mml-svg.js",
           "tex-svg.js", "tex-svg-full.js", "mml-chtml.js", "mml-svg.js", "node-main.js"}
_PACKAGE = "sphinx-mathjax-offline"  # its import name has hyphens, as on PyPI


def mathjax_source() -> Path:
    """The folder of the pip-installed MathJax 3 distribution (holding tex-chtml.js).

    Raises RuntimeError, saying what to install, when the `book` extra is not installed."""
    spec = importlib.util.find_spec(_PACKAGE)
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    if folder is None or not (folder / MATHJAX_ENTRY).is_file():
        raise RuntimeError(f"MathJax not found: the website needs the package {_PACKAGE}. "
                           "Fix: pip install -e '.[book]'")
    return folder


def vendor_mathjax(static_dir) -> Path:
    """Copy MathJax into `static_dir`/mathjax (a site's `_static`) and return that folder."""
    if not isinstance(static_dir, (str, Path)):
        raise TypeError(f"static_dir must be a path, got {type(static_dir).__name__}")
    source = mathjax_source()
    target = Path(static_dir) / "mathjax"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=lambda folder, names: [
        name for name in names if Path(folder) == source and name in _UNUSED])
    return target
