"""The certificate's PDF (matplotlib): who, what, when, each lesson's result, how to verify.

Layout is computed, not fixed: the name is shrunk, then wrapped (at spaces, or between
characters for a script without spaces) until it fits its band; the lessons are laid out in
one column up to `ONE_COLUMN_MAX` and two beyond (13 lessons fit), rows and type sized from
their number.

Scripts: matplotlib ships DejaVu Sans (Latin, Greek, Cyrillic, Arabic, Hebrew, ...), not CJK.
For characters DejaVu Sans lacks, the installed fonts matplotlib knows are searched for one
that has them (e.g. Noto Sans CJK, installed with `apt install fonts-noto-cjk`); matplotlib's
font fallback then draws each character with the first font that has it. Characters no font
has are returned by `write_pdf` so the caller can name them (the JSON credential holds the
name exactly either way); matplotlib's "Last Resort" placeholder font does not count.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache

__all__ = ["ONE_COLUMN_MAX", "LESSON_BAND", "font_families", "missing_characters",
           "lesson_grid", "write_pdf"]

ONE_COLUMN_MAX = 8
LESSON_BAND = (0.22, 0.555)  # bottom and top of the lessons' rows, as fractions of the height
_PAGE_HEIGHT_PT = 8.27 * 72  # A4 landscape
_BASE_FAMILY = "DejaVu Sans"
_NOT_COVERAGE = ("Last Resort",)  # placeholder glyphs (boxes with the code point): not drawing


@lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except Exception:  # an unreadable font file covers nothing
        return frozenset()


def _candidates():
    """(family name, file) of every font matplotlib knows, DejaVu Sans first."""
    from matplotlib import font_manager

    fonts = sorted({(f.name, f.fname) for f in font_manager.fontManager.ttflist
                    if not f.name.startswith(_NOT_COVERAGE)},
                   key=lambda nf: (nf[0] != _BASE_FAMILY, nf[0], nf[1]))
    return fonts


def font_families(text: str, candidates=None) -> tuple[list[str], list[str]]:
    """(families to draw `text` with, characters none of them has). The families start with
    DejaVu Sans and add, in order, the first font that has each character it lacks."""
    candidates = _candidates() if candidates is None else candidates
    families, missing = [_BASE_FAMILY], []
    covered = set()
    base = [path for name, path in candidates if name == _BASE_FAMILY]
    if base:
        covered |= _charmap(base[0])
    for char in dict.fromkeys(text):
        if char.isspace() or ord(char) in covered:
            continue
        for name, path in candidates:
            charmap = _charmap(path)
            if ord(char) in charmap:
                if name not in families:
                    families.append(name)
                    covered |= charmap
                break
        else:
            missing.append(char)
    return families, missing


def missing_characters(text: str) -> list[str]:
    """The characters of `text` that no installed font can draw."""
    return font_families(text)[1]


def _name_layout(name: str, measure, width: float, max_lines: int = 3):
    """(font size, lines) for `name` within `width`: the largest size from 30 down to 20 pt in
    the fewest lines (1 to `max_lines`), else down to 9 pt in `max_lines` lines (a name of 200
    characters fits in 3 lines at about 17 pt).

    Words are split at spaces; a word too wide for a line is split between characters (CJK
    names have no spaces)."""
    tiers = [(lines, range(30, 19, -1)) for lines in range(1, max_lines + 1)]
    tiers.append((max_lines, range(19, 8, -1)))
    tiers.append((max_lines + 1, range(8, 4, -1)))  # beyond any 200-character name
    for lines, sizes in tiers:
        for size in sizes:
            fits = lambda s, size=size: measure(s, size) <= width  # noqa: E731
            pieces = []
            for word in name.split(" "):
                if fits(word):
                    pieces.append(word)
                    continue
                chunk = ""
                for char in word:  # break a long word between characters
                    if chunk and not fits(chunk + char):
                        pieces.append(chunk)
                        chunk = ""
                    chunk += char
                pieces.append(chunk)
            wrapped = _wrap_pieces(pieces, lines, fits)
            if wrapped is not None:
                return size, wrapped
    return 5, [name]


def _wrap_pieces(pieces, lines, fits):
    """Greedy: join `pieces` with spaces into at most `lines` lines that `fits`, else None."""
    out, current = [], ""
    for piece in pieces:
        trial = f"{current} {piece}" if current else piece
        if fits(trial):
            current = trial
        else:
            out.append(current)
            current = piece
    out.append(current)
    return out if len(out) <= lines else None


def _fit(text: str, measure, size: float, width: float) -> str:
    """`text`, cut with an ellipsis until it fits `width` at `size`."""
    if measure(text, size) <= width:
        return text
    while len(text) > 1 and measure(text + "…", size) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def lesson_grid(n: int) -> tuple[int, int, float]:
    """(columns, rows, font size in points) of the lessons' table for `n` lessons: one column
    up to ONE_COLUMN_MAX, else two; the rows share LESSON_BAND; type at most 12 pt."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of lessons, got {n!r}")
    columns = 1 if n <= ONE_COLUMN_MAX else 2
    rows = math.ceil(n / columns)
    row_h = (LESSON_BAND[1] - LESSON_BAND[0]) / rows
    return columns, rows, min(12.0, 0.5 * row_h * _PAGE_HEIGHT_PT)


def write_pdf(facts, path, record_name: str) -> list[str]:
    """Draw the certificate of `facts` (a credential's `Facts`) to `path` (PDF, A4 landscape).
    Returns the characters of the name or issuer that no installed font can draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    families, missing = font_families(facts.name + facts.issuer_name)
    width_in, height_in = 11.69, 8.27
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)

    def measure(s, size, **kw):
        """Width of `s` at `size` points, as a fraction of the page width."""
        kw.setdefault("family", families)
        t = ax.text(0, 0, s, fontsize=size, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = t.get_window_extent(renderer).width
        t.remove()
        return w / (fig.dpi * width_in)

    def text(x, y, s, **kw):
        kw.setdefault("ha", "center")
        kw.setdefault("va", "center")
        kw.setdefault("family", families)
        ax.text(x, y, s, **kw)

    blue = "#1f3b73"
    ax.add_patch(Rectangle((0.03, 0.04), 0.94, 0.92, fill=False, linewidth=3, edgecolor=blue))
    text(0.5, 0.885, "Certificate of completion", fontsize=28, weight="bold", color=blue)
    text(0.5, 0.815, "Deep Dive into Batch Normalization", fontsize=17)
    text(0.5, 0.76, "awarded to", fontsize=12, style="italic")
    # The name's band: 0.645-0.735 of the page height; its lines share it.
    size, lines = _name_layout(facts.name, lambda s, z: measure(s, z, weight="bold"), 0.84)
    band_top, band_bottom = 0.735, 0.645
    step = min((band_top - band_bottom) / len(lines), 1.35 * size / 72 / height_in)
    middle = (band_top + band_bottom) / 2
    for i, line in enumerate(lines):
        text(0.5, middle + step * ((len(lines) - 1) / 2 - i), line, fontsize=size,
             weight="bold")
    if missing:
        text(0.5, band_bottom - 0.012, "(" + ", ".join(f"U+{ord(c):04X}" for c in missing)
             + ": no installed font has these characters; the credential holds the name "
               "exactly)", fontsize=7, color="0.35")
    when = facts.valid_from[:10]
    issuer = facts.issuer_name if facts.signed else "self-issued (unsigned)"
    text(0.5, 0.605, _fit(f"on {when}  ·  issued by {issuer}  ·  course version "
                          f"{facts.course_version}", measure, 11, 0.88), fontsize=11)
    # Lessons: one column up to ONE_COLUMN_MAX, else two; rows share the band 0.22-0.555.
    lessons = sorted(facts.lessons, key=lambda r: r.lesson)
    columns, rows, size = lesson_grid(max(1, len(lessons)))
    bottom, top = LESSON_BAND
    row_h = (top - bottom) / rows
    col_w = 0.88 / columns if columns == 2 else 0.66
    x0 = 0.5 - col_w * columns / 2
    for i, r in enumerate(lessons):
        col, row = divmod(i, rows)
        x, y = x0 + col * col_w, top - row_h * (row + 0.5)
        score = f"{r.points}/{r.max_points}  {r.score:.0%}"
        label = _fit(f"Lesson {r.lesson}  {r.title}", measure, size,
                     col_w - measure(score, size) - 0.03)
        text(x + 0.01, y, label, fontsize=size, ha="left")
        text(x + col_w - 0.01, y, score, fontsize=size, ha="right")
    how = (f"Pass mark {facts.pass_mark:.0%} of each lesson's points. "
           + ("Signed with Ed25519 by the issuer's key (an Open Badges 3.0 credential)."
              if facts.signed else "UNSIGNED: self-issued, not signed by an instructor."))
    text(0.5, 0.175, how, fontsize=10)
    command = f"bncourse verify {record_name}" + (" --public-key public_key.pem"
                                                  if facts.signed else "")
    mono = "DejaVu Sans Mono"
    # A command cut short is useless: shrink it to fit instead (9 pt down to 5 pt).
    line = f"Verify:  {command}  [--regrade FOLDER]"
    size = next((z for z in (9, 8, 7, 6, 5) if measure(line, z, family=mono) <= 0.9), 5)
    text(0.5, 0.13, line, fontsize=size, family=mono)
    ids = f"issuer {facts.issuer_id}  ·  {facts.credential_id}"
    size = next((z for z in (7, 6, 5) if measure(ids, z, family=mono) <= 0.9), 5)
    text(0.5, 0.09, ids, fontsize=size, family=mono, color="0.35")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Glyph missing": those characters are returned
        fig.savefig(path, format="pdf")
    return missing
