"""`bncourse verify RECORD --public-key PUBLIC.pem [--regrade FOLDER]`.

Checks, in order: the record is a credential the course writes (rebuilt from the facts it
states and compared field by field), its Ed25519 proof is by the key given, the course's pass
rule holds for the scores it states; with `--regrade`, each notebook it names is read from
FOLDER only (a plain file name, never a path the record chooses), hashed, and re-graded with
the seed the record holds, so a borderline submission gets the same points every time.
Exit 0 only when every check passes.
"""
from __future__ import annotations

import json
from pathlib import Path

from bncourse.grading import registry
from bncourse.grading.certificate.contexts import undefined_terms
from bncourse.grading.certificate.credential import (SELF_ISSUED, CredentialError,
                                                     build_credential, check_proof,
                                                     facts_from_credential, first_difference)
from bncourse.grading.certificate.keys import did_key
from bncourse.grading.sandbox import SandboxLimits

__all__ = ["UNSIGNED_WARNING", "check_record", "regrade_failures", "verify"]

UNSIGNED_WARNING = "unsigned: self-issued, not signed by an instructor"


def _plain_name(name: str) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and Path(name).name == name)


def regrade_failures(facts, folder, limits: SandboxLimits) -> list[str]:
    """Re-grade each notebook the record names, read only from inside `folder`: first each
    file's name (a plain file name), place (no link out of `folder`) and SHA-256, then, when all
    match, each is graded with the record's seed."""
    from bncourse.grading.grade import GraderError, _sha256, grade_notebook

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--regrade {folder}: no such folder")
    root = folder.resolve()
    failures, paths = [], {}
    # First every file's name, place and hash (cheap); grade only when all of them match.
    for r in facts.lessons:
        if not _plain_name(r.file):
            failures.append(f"lesson {r.lesson}: the record names {r.file!r}, not a plain file "
                            f"name: only files directly inside {folder} are read")
            continue
        path = folder / r.file
        if not path.resolve().is_relative_to(root):
            failures.append(f"lesson {r.lesson}: {path} links to outside {folder}: not read")
        elif not path.is_file():
            failures.append(f"lesson {r.lesson}: {r.file} not found in {folder}")
        elif _sha256(path.read_bytes()) != r.sha256:
            failures.append(f"lesson {r.lesson}: {r.file}: SHA-256 differs from the record (the "
                            "file changed since the certificate was issued)")
        else:
            paths[r.lesson] = path
    if failures:
        return failures
    for r in facts.lessons:
        try:
            nb = grade_notebook(paths[r.lesson], limits, seed=facts.seed)
        except GraderError:
            raise
        except ValueError as exc:
            failures.append(f"lesson {r.lesson}: {r.file} cannot be graded: {exc}")
            continue
        if nb.sha256 != r.sha256:
            failures.append(f"lesson {r.lesson}: {r.file} changed while it was being re-graded")
        elif nb.module != r.lesson:
            failures.append(f"lesson {r.lesson}: {r.file} is a notebook of module {nb.module}")
        elif (nb.points, nb.max_points) != (r.points, r.max_points):
            lost = [f"{e.id}: {c.name}: {c.message}" for e in nb.exercises for c in e.checks
                    if c.points < c.max_points]
            timed_out = any("time limit" in m for m in lost)
            failures.append(
                f"lesson {r.lesson}: re-graded {nb.points}/{nb.max_points} (seed {facts.seed}), "
                f"the record says {r.points}/{r.max_points}"
                + (f"; lost: {'; '.join(lost[:3])}" if lost else "")
                + (f" (a check hit the time limit of {limits.timeout:g} s: on a busy machine, "
                   "re-run with a larger --timeout)" if timed_out else ""))
    return failures


def check_record(credential, public_key=None, regrade=None,
                 limits: SandboxLimits = SandboxLimits()) -> tuple[list[str], list[str]]:
    """(failures, warnings) for a credential (parsed JSON); no failures means verified.

    `public_key`: the issuer's Ed25519 public key (None: not given). `regrade`: a folder
    holding the notebooks to re-grade (None: the record alone)."""
    failures, warnings = [], []
    try:
        facts = facts_from_credential(credential)
        rebuilt = build_credential(facts)
    except CredentialError as exc:
        return [f"not a bncourse credential: {exc}"], warnings
    try:
        undefined = undefined_terms(credential)
    except ValueError as exc:  # a context that is not bundled: never fetched
        undefined = []
        failures.append(f"the record's @context: {exc}")
    if undefined:
        failures.append(f"the record uses properties no context defines (a JSON-LD processor "
                        f"drops them): {', '.join(undefined[:5])}")
    unsecured = {k: v for k, v in credential.items() if k != "proof"}
    difference = first_difference(unsecured, rebuilt)
    if difference:
        failures.append(f"the record differs from what the course writes for the facts it "
                        f"states: {difference}")
    if facts.signed:
        proof_failures, signer = check_proof(credential, public_key)
        failures.extend(proof_failures)
        if public_key is None and not proof_failures:
            failures.append(f"no --public-key given: the proof is by the key the record itself "
                            f"names ({signer}), which anyone can make; give the issuer's "
                            "public_key.pem to check who signed it")
    else:
        if "proof" in credential:
            failures.append(f"the issuer is {SELF_ISSUED!r} but the record carries a proof")
        if public_key is not None:
            failures.append(f"the record is unsigned (self-issued): it was not issued by the "
                            f"key given ({did_key(public_key)})")
        else:
            warnings.append(UNSIGNED_WARNING)
    if facts.pass_mark < registry.PASS_MARK:
        failures.append(f"the record's pass mark {facts.pass_mark:.0%} is below the course's "
                        f"{registry.PASS_MARK:.0%}")
    lessons = {r.lesson: r for r in facts.lessons}
    if len(lessons) != len(facts.lessons):
        failures.append("the record lists a lesson twice")
    for lesson in facts.required:
        r = lessons.get(lesson)
        if r is None:
            failures.append(f"lesson {lesson}: required, but the record holds no result")
        elif r.max_points <= 0 or r.score < facts.pass_mark - 1e-12:
            failures.append(f"lesson {lesson}: {r.points}/{r.max_points} is below the pass mark")
    if set(facts.required) != set(registry.REQUIRED_MODULES):
        warnings.append(f"issued under course version {facts.course_version}, which required "
                        f"lessons {', '.join(facts.required)}; this version requires "
                        f"{', '.join(registry.REQUIRED_MODULES)}")
    from bncourse.grading.grade import GRADER_VERSION

    if facts.grader_version != GRADER_VERSION:
        warnings.append(f"graded by grader version {facts.grader_version}; this is version "
                        f"{GRADER_VERSION}: a re-grade may differ")
    if regrade is not None and not failures:
        failures.extend(regrade_failures(facts, regrade, limits))
    return failures, warnings


def verify(record_path, public_key=None, regrade=None,
           limits: SandboxLimits = SandboxLimits()) -> int:
    """Print what was checked; 0 when the record is verified, 1 when not."""
    record_path = Path(record_path)
    if not record_path.is_file():
        raise ValueError(f"{record_path}: no such file")
    try:
        credential = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        print(f"NOT VERIFIED: {record_path} is not a JSON record ({exc})")
        return 1
    failures, warnings = check_record(credential, public_key, regrade, limits)
    for warning in warnings:
        print(f"warning: {warning}")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        print(f"NOT VERIFIED: {record_path}")
        return 1
    facts = facts_from_credential(credential)
    summary = (f"{facts.name}, {facts.valid_from[:10]}, course version {facts.course_version}: "
               + ", ".join(f"lesson {r.lesson} {r.score:.0%}" for r in facts.lessons))
    checked = (f"the notebooks in {regrade} re-grade to the recorded points (seed {facts.seed})"
               if regrade is not None else
               "the record alone (add --regrade FOLDER to re-grade the notebooks)")
    if facts.signed:
        print(f"VERIFIED: signed by {facts.issuer_name} ({facts.issuer_id}). {summary}")
        print(f"Checked: the signature, the fields, the pass rule; {checked}.")
        return 0
    if regrade is None:
        print("NOT VERIFIED: the record is unsigned (self-issued), so only a re-grade can "
              "support it: add --regrade FOLDER")
        return 1
    print(f"SELF-ISSUED (unsigned, no instructor vouches for it): {summary}")
    print(f"Checked: the fields, the pass rule; {checked}.")
    return 0
