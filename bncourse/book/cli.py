"""The `bncourse book` subcommand: build the course website (see `bncourse.book.build`)."""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["register"]


def _cmd_book(args) -> int:
    from bncourse.cli import find_course_root

    root = find_course_root()
    if root is None:
        print("bncourse book: cannot find the course's notebooks/ folder; "
              "run it from the course checkout.", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else root / "build" / "book"
    from bncourse.book.build import build_book, site_size

    try:
        book = build_book(root, out, jobs=args.jobs)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"bncourse book: {exc}", file=sys.stderr)
        return 2
    for line in book.warnings:
        print(line, file=sys.stderr)
    cpu = f", {book.cpu_seconds:.1f} s CPU" if book.cpu_seconds is not None else ""
    print(f"Built {len(book.pages)} pages in {book.seconds:.1f} s{cpu} "
          f"({site_size(book.out) / 1e6:.1f} MB), {len(book.warnings)} warning(s).")
    print(f"Open {book.index} in a browser; the folder can be published as is "
          "(e.g. on GitHub Pages).")
    return 0


def register(sub) -> None:
    """Add `book` to the `bncourse` command's subparsers `sub`."""
    book = sub.add_parser(
        "book", help="build the course as a static website (lessons and read-only exercises)",
        description="Build the course website from the committed, executed notebooks: nothing "
                    "executes and nothing is fetched. Needs the book extra: "
                    "pip install -e '.[book]'.")
    book.add_argument("--out", metavar="DIR", default=None,
                      help="where to write the site (default: build/book in the course folder; "
                           "replaced if present)")
    book.add_argument("--jobs", type=int, default=1, metavar="N",
                      help="Sphinx processes to build with (default 1)")
    book.set_defaults(func=_cmd_book)
