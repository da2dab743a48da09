"""`bncourse certificate --name NAME --path FOLDER --key-file PRIVATE.pem --out OUT`.

Grades FOLDER; when every required lesson passes, writes OUT/certificate_<name>_<date>_<id>.json
(the credential) and the .pdf beside it. The private key is read only after grading, when every
process that ran learner code has ended, and is never passed to another process.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from bncourse._version import __version__
from bncourse.grading import registry
from bncourse.grading.certificate.credential import (SELF_ISSUED, Facts, LessonResult,
                                                     build_credential, new_credential_id,
                                                     now_utc, sign_credential)
from bncourse.grading.certificate.keys import did_key, load_private_key
from bncourse.grading.certificate.pdf import write_pdf
from bncourse.grading.sandbox import SandboxLimits

__all__ = ["DEFAULT_ISSUER", "check_name", "lesson_title", "problems", "make_facts",
           "write_certificate", "issue"]

DEFAULT_ISSUER = "bncourse instructor"
MAX_NAME = 200


def check_name(name, option: str = "--name") -> str:
    """The name with runs of whitespace made one space; ValueError if empty, too long, or
    holding control characters."""
    if not isinstance(name, str):
        raise TypeError(f"{option} must be a string, got {type(name).__name__}")
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"{option} must be 1 to {MAX_NAME} characters")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs")]
    if bad:
        raise ValueError(f"{option} holds control characters: "
                         + ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(bad)))
    return name


def lesson_title(lesson: str) -> str:
    """The lesson's short topic from the syllabus ("the forward pass"), else ''."""
    from bncourse.syllabus import LESSONS

    for entry in LESSONS:
        if entry.number == lesson:
            topic = entry.topic.split(" (")[0]
            return topic.split(":")[0] if len(topic) > 40 else topic
    return ""


def problems(report, folder) -> list[str]:
    """Why `report` earns no certificate (empty: it does)."""
    modules = report.modules()
    found = []
    for module in registry.REQUIRED_MODULES:
        counted = [nb for nb in report.notebooks if nb.module == module]
        corrupted = [nb for nb in counted if any("corrupted" in e for e in nb.errors)]
        if corrupted:
            found.append(f"module {module}: {Path(corrupted[0].path).name} is corrupted "
                         "(not a readable notebook)")
        elif module not in modules:
            found.append(f"module {module}: missing (expected {registry.NOTEBOOKS[module]} "
                         f"in {folder})")
        elif len(counted) > 1:
            found.append(f"module {module}: {len(counted)} notebooks; keep one")
        elif not modules[module]["passed"]:
            found.append(f"module {module}: {modules[module]['score']:.0%}, below the pass "
                         f"mark of {registry.PASS_MARK:.0%}")
    return found


def make_facts(name: str, report, issuer_id: str = SELF_ISSUED,
               issuer_name: str = DEFAULT_ISSUER, valid_from: str | None = None) -> Facts:
    """The facts of a certificate for a passing report (`problems(report)` empty)."""
    from bncourse.grading.grade import GRADER_VERSION

    lessons = []
    for module in registry.REQUIRED_MODULES:
        nb = next(nb for nb in report.notebooks if nb.module == module)
        lessons.append(LessonResult(module, lesson_title(module), nb.points, nb.max_points,
                                    Path(nb.path).name, nb.sha256))
    return Facts(name=name, valid_from=valid_from or now_utc(),
                 credential_id=new_credential_id(), issuer_id=issuer_id,
                 issuer_name=issuer_name if issuer_id != SELF_ISSUED else "self-issued",
                 course_version=__version__, grader_version=GRADER_VERSION,
                 pass_mark=registry.PASS_MARK, seed=report.seed,
                 required=tuple(registry.REQUIRED_MODULES), lessons=tuple(lessons))


def _slug(name: str) -> str:
    """ASCII file-name part of a name ("Zoë O'Neil" -> "zoe_o_neil"); '' for other scripts."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", "_", ascii_name).strip("_").lower()[:24].strip("_")


def write_certificate(facts: Facts, out, key=None) -> tuple[Path, Path, list[str]]:
    """Write the credential (signed with `key`, an Ed25519 private key, when given) and its PDF
    to `out`. The file name ends with the credential's own id, so two learners' files never
    collide, whatever their names; an existing file is never overwritten.
    Returns (json path, pdf path, characters the PDF cannot draw)."""
    credential = build_credential(facts)
    if key is not None:
        credential = sign_credential(credential, key)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    short = facts.credential_id.rsplit(":", 1)[-1].replace("-", "")[:12]
    stem = "_".join(p for p in ("certificate", _slug(facts.name), facts.valid_from[:10], short)
                    if p)
    record_path, pdf_path = out / f"{stem}.json", out / f"{stem}.pdf"
    with open(record_path, "x", encoding="utf-8") as f:  # "x": fail rather than overwrite
        f.write(json.dumps(credential, indent=2, ensure_ascii=False) + "\n")
    missing = write_pdf(facts, pdf_path, record_path.name)
    return record_path, pdf_path, missing


def missing_note(missing: list[str]) -> str:
    return ("warning: no installed font can draw these characters of the name, so the PDF "
            "shows boxes for them (the JSON credential holds the name exactly): "
            + ", ".join(f"{c!r} U+{ord(c):04X}" for c in missing)
            + ". Install a font that has them (e.g. Noto Sans CJK) and issue again.")


def issue(name: str, path="exercises/", out="certificates/", key_file=None,
          limits: SandboxLimits = SandboxLimits(), issuer_name: str = DEFAULT_ISSUER) -> int:
    """Grade `path`; if every required module passes, write the credential and PDF to `out`,
    signed with the Ed25519 key in `key_file` when given. Returns 0 when issued, 1 otherwise
    (nothing written)."""
    from bncourse.grading.grade import grade_path

    name = check_name(name)
    issuer_name = check_name(issuer_name, "--issuer")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--path {path}: no such folder")
    if key_file is not None and not Path(key_file).is_file():
        raise ValueError(f"--key-file {key_file}: no such file")  # before grading; read after
    report = grade_path(folder, limits, modules=registry.REQUIRED_MODULES)
    print(report.text(), end="")
    found = problems(report, folder)
    if found:
        print("No certificate yet:")
        for problem in found:
            print(f"  - {problem}")
        return 1
    # Every process that ran learner code has ended: only now is the key read.
    key = load_private_key(key_file) if key_file is not None else None
    issuer_id = did_key(key.public_key()) if key is not None else SELF_ISSUED
    facts = make_facts(name, report, issuer_id, issuer_name)
    record_path, pdf_path, missing = write_certificate(facts, out, key)
    if missing:
        print(missing_note(missing))
    print(f"Certificate issued: {pdf_path} and {record_path}"
          + (f" (signed by {issuer_id})" if key is not None
             else " (unsigned: self-issued, not signed by an instructor)"))
    print("Verify with: bncourse verify " + str(record_path)
          + (" --public-key public_key.pem" if key is not None else f" --regrade {folder}"))
    return 0
