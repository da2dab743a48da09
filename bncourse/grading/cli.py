"""Grading subcommands of the `bncourse` command: `grade`, `keygen`, `certificate`, `verify`,
`assign`.

    bncourse grade PATH                     a notebook, a folder of them, or (batch) a folder
                                            of learners' folders: gradebook CSV + JSON
    bncourse keygen --out DIR               DIR/private_key.pem (0600), DIR/public_key.pem
    bncourse certificate --name NAME --path FOLDER --key-file PRIVATE.pem --out OUT
    bncourse verify RECORD --public-key PUBLIC.pem [--regrade FOLDER]

Exit status, one rule: 0 when the command did what it was asked (`grade`: grading completed,
whatever the score; `certificate`: issued; `verify`: verified); 1 when the answer is "no"
(`certificate`: a module missing or failing; `verify`: not verified); 2 for bad input (a path
that does not exist, a corrupted notebook, another course's notebook, a bad key file); 3 when
the grader itself cannot run (e.g. `--memory-mb` too small for it to start).
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


def _run(command: str, action) -> int:
    """Run `action()`; bad input -> 2, the grader's own failure -> 3, each with one line."""
    from bncourse.grading.grade import GraderError

    try:
        return action()
    except GraderError as exc:
        print(f"bncourse {command}: grader error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, TypeError) as exc:
        print(f"bncourse {command}: {exc}", file=sys.stderr)
        return 2


def _check_limits(command: str, args) -> bool:
    if args.timeout <= 0 or args.memory_mb <= 0:
        print(f"bncourse {command}: --timeout and --memory-mb must be positive", file=sys.stderr)
        return False
    return True


def _cmd_grade(args) -> int:
    from pathlib import Path

    from bncourse.grading import batch
    from bncourse.grading.grade import dump_json, grade_path

    if not _check_limits("grade", args):
        return 2
    if args.workers is not None and args.workers < 1:
        print("bncourse grade: --workers must be at least 1", file=sys.stderr)
        return 2

    def action():
        if batch.is_batch(Path(args.path)):
            return batch.main(args.path, args.out or "gradebook", _limits(args),
                              key_file=args.key_file, seed=args.seed, workers=args.workers,
                              issuer_name=args.issuer)
        if args.key_file or args.out:
            raise ValueError("--key-file and --out are for a folder of learners' folders "
                             "(a batch); for one learner use `bncourse certificate`")
        report = grade_path(args.path, _limits(args), seed=args.seed)
        print(dump_json(report) if args.json else report.text(), end="\n" if args.json else "")
        return 0

    return _run("grade", action)


def _cmd_keygen(args) -> int:
    from bncourse.grading.certificate import keygen

    def action():
        private, public = keygen(args.out)
        print(f"wrote {private} (keep it secret: mode 0600) and {public} (give it to anyone "
              "who verifies a certificate)")
        return 0

    return _run("keygen", action)


def _cmd_certificate(args) -> int:
    from bncourse.grading.certificate import issue

    if not _check_limits("certificate", args):
        return 2
    return _run("certificate", lambda: issue(args.name, args.path, args.out, args.key_file,
                                             _limits(args), issuer_name=args.issuer))


def _cmd_verify(args) -> int:
    from bncourse.grading.certificate import load_public_key, verify

    if not _check_limits("verify", args):
        return 2

    def action():
        key = load_public_key(args.public_key) if args.public_key else None
        return verify(args.record, key, args.regrade, _limits(args))

    return _run("verify", action)


def _cmd_assign(args) -> int:
    from bncourse.grading.assign import main

    return main(["--solutions", args.solutions, "--exercises", args.exercises]
                + (["--no-execute"] if args.no_execute else [])
                + (["--force"] if args.force else []))


def register(subparsers) -> None:
    """Add `grade`, `keygen`, `certificate`, `verify` and `assign` to the `bncourse` command."""
    from bncourse.grading.certificate.issue import DEFAULT_ISSUER

    grade = subparsers.add_parser(
        "grade", help="grade exercise notebooks: a file, a folder, or a folder of learners' "
                      "folders (a batch: gradebook CSV + JSON, credentials with --key-file)")
    grade.add_argument("path", help="an exercise notebook, a folder of them, or a folder "
                                    "holding one folder per learner")
    grade.add_argument("--json", action="store_true", help="print the report as JSON")
    grade.add_argument("--seed", type=int, default=None,
                       help="seed for the check inputs (default: a fresh one per learner)")
    grade.add_argument("--out", default=None, help="batch: folder for gradebook.csv, "
                       "gradebook.json and credentials/ (default gradebook/)")
    grade.add_argument("--key-file", default=None, help="batch: the instructor's "
                       "private_key.pem; one signed credential per learner who passed")
    grade.add_argument("--workers", type=int, default=None,
                       help="batch: learners graded at once (default: the CPU count, at most 4)")
    grade.add_argument("--issuer", default=DEFAULT_ISSUER, help="batch: the issuer's name on "
                       f"the credentials (default {DEFAULT_ISSUER!r})")
    _add_limits(grade)
    grade.set_defaults(func=_cmd_grade)

    keygen = subparsers.add_parser("keygen", help="make an instructor's Ed25519 key pair "
                                   "for signing certificates")
    keygen.add_argument("--out", required=True, help="folder for private_key.pem (mode 0600) "
                        "and public_key.pem")
    keygen.set_defaults(func=_cmd_keygen)

    cert = subparsers.add_parser("certificate", help="grade every module and issue a "
                                 "certificate (Open Badges 3.0 credential + PDF) when all pass")
    cert.add_argument("--name", required=True, help="the learner's name, as it should appear")
    cert.add_argument("--path", default="exercises/",
                      help="folder of exercise notebooks (default exercises/)")
    cert.add_argument("--out", default="certificates/",
                      help="folder for the certificate (default certificates/)")
    cert.add_argument("--key-file", default=None, help="the instructor's private_key.pem "
                      "(from `bncourse keygen`); without one the record is unsigned")
    cert.add_argument("--issuer", default=DEFAULT_ISSUER,
                      help=f"the issuer's name on the certificate (default {DEFAULT_ISSUER!r})")
    _add_limits(cert)
    cert.set_defaults(func=_cmd_certificate)

    verify = subparsers.add_parser("verify", help="check a certificate's signature and record; "
                                   "--regrade also re-grades its notebooks")
    verify.add_argument("record", help="the certificate's JSON credential")
    verify.add_argument("--public-key", default=None, help="the issuer's public_key.pem "
                        "(needed for a signed record)")
    verify.add_argument("--regrade", default=None, metavar="FOLDER",
                        help="re-grade the notebooks the record names, read from FOLDER only")
    _add_limits(verify)
    verify.set_defaults(func=_cmd_verify)

    assign = subparsers.add_parser("assign", help="generate exercises/ from solutions/ "
                                   "(course authors)")
    assign.add_argument("--solutions", default="solutions")
    assign.add_argument("--exercises", default="exercises")
    assign.add_argument("--no-execute", action="store_true",
                        help="write the notebooks without executing them")
    assign.add_argument("--force", action="store_true",
                        help="overwrite exercise notebooks a learner has filled in")
    assign.set_defaults(func=_cmd_assign)
