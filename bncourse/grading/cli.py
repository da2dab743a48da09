"""Grading subcommands of the `bncourse` command (filled in by the grading work)."""


def register(subparsers) -> None:
    """Add `grade`, `certificate` and `verify` to the `bncourse` command."""
