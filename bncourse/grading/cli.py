"""Grading subcommands of the `bncourse` command: `grade`, `certificate`, `verify`, `assign`.

Exit status: `grade` returns 0 whenever grading completed (whatever the score) and 2 for a
usage error (bad path, not a notebook); `certificate` returns 0 when issued, 1 when a module is
missing or failing; `verify` 0 when the record checks out, 1 when it does not.
"""
from __future__ import annotations

import sys

__all__ = ["register"]


def _limits(args):
    from bncourse.grading.sandbox import SandboxLimits

    return SandboxLimits(timeout=args.timeout, memory_mb=args.memory_mb)


def _add_limits(parser) -> None:
    parser.add_argument("--timeout", type=float, default=20.0, metavar="S",
                        help="seconds allowed per notebook cell and per check (default 20)")
    parser.add_argument("--memory-mb", type=int, default=4096, metavar="M",
                        help="address-space limit of the process running learner code "
                             "(default 4096)")


def _cmd_grade(args) -> int:
    from bncourse.grading.grade import dump_json, grade_path

    if args.timeout <= 0 or args.memory_mb <= 0:
        print("bncourse grade: --timeout and --memory-mb must be positive", file=sys.stderr)
        return 2
    try:
        report = grade_path(args.path, _limits(args), seed=args.seed)
    except ValueError as exc:
        print(f"bncourse grade: {exc}", file=sys.stderr)
        return 2
    print(dump_json(report) if args.json else report.text(), end="" if not args.json else "\n")
    return 0


def _key(args):
    from bncourse.grading.certificate import load_key

    return load_key(getattr(args, "key_file", None))


def _cmd_certificate(args) -> int:
    from bncourse.grading.certificate import issue

    try:
        key = _key(args)
        return issue(args.name, args.path, args.out, key, _limits(args))
    except ValueError as exc:
        print(f"bncourse certificate: {exc}", file=sys.stderr)
        return 2


def _cmd_verify(args) -> int:
    from bncourse.grading.certificate import verify

    try:
        key = _key(args)
        return verify(args.record, key, args.path, _limits(args))
    except ValueError as exc:
        print(f"bncourse verify: {exc}", file=sys.stderr)
        return 2


def _cmd_assign(args) -> int:
    from bncourse.grading.assign import main

    return main(["--solutions", args.solutions, "--exercises", args.exercises]
                + (["--no-execute"] if args.no_execute else []))


def register(subparsers) -> None:
    """Add `grade`, `certificate`, `verify` and `assign` to the `bncourse` command."""
    grade = subparsers.add_parser("grade", help="grade exercise notebooks (a file or a folder)")
    grade.add_argument("path", help="an exercise notebook or a folder of them")
    grade.add_argument("--json", action="store_true", help="print the report as JSON")
    grade.add_argument("--seed", type=int, default=None,
                       help="seed for the check inputs (default: a fresh one per run)")
    _add_limits(grade)
    grade.set_defaults(func=_cmd_grade)

    cert = subparsers.add_parser("certificate", help="grade every module and issue a "
                                 "certificate (PDF + JSON record) when all pass")
    cert.add_argument("--name", required=True, help="the learner's name, as it should appear")
    cert.add_argument("--path", default="exercises/",
                      help="folder of exercise notebooks (default exercises/)")
    cert.add_argument("--out", default="certificates/",
                      help="folder for the certificate (default certificates/)")
    cert.add_argument("--key-file", default=None, help="instructor's HMAC key (or set "
                      "BNCOURSE_CERT_KEY); without one the record is unsigned")
    _add_limits(cert)
    cert.set_defaults(func=_cmd_certificate)

    verify = subparsers.add_parser("verify", help="re-grade and check a certificate record")
    verify.add_argument("record", help="the certificate's JSON record")
    verify.add_argument("--key-file", default=None, help="instructor's HMAC key (or set "
                        "BNCOURSE_CERT_KEY) to check the signature")
    verify.add_argument("--path", default=None, help="folder holding the graded notebooks "
                        "(default: the folder named in the record)")
    _add_limits(verify)
    verify.set_defaults(func=_cmd_verify)

    assign = subparsers.add_parser("assign", help="generate exercises/ from solutions/ "
                                   "(course authors)")
    assign.add_argument("--solutions", default="solutions")
    assign.add_argument("--exercises", default="exercises")
    assign.add_argument("--no-execute", action="store_true",
                        help="write the notebooks without executing them")
    assign.set_defaults(func=_cmd_assign)
