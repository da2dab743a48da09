"""Certificates: `bncourse certificate` issues one when every required module passes,
`bncourse verify` re-grades and checks a record.

A certificate is a PDF (matplotlib) plus a JSON record: name, date, course version, per-module
scores, the SHA-256 of each graded notebook, and `signed`/`signature`. With an instructor's key
(`--key-file` or the environment variable BNCOURSE_CERT_KEY) the signature is
HMAC-SHA256(key, canonical JSON of every other field), so an edited or forged record fails
verification; without a key the record is self-issued, and `verify` says so.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
from pathlib import Path

from bncourse._version import __version__
from bncourse.grading import registry
from bncourse.grading.grade import GRADER_VERSION, grade_notebook, grade_path
from bncourse.grading.sandbox import SandboxLimits

__all__ = ["KEY_ENV", "load_key", "canonical", "sign", "build_record", "issue", "verify",
           "check_record"]

KEY_ENV = "BNCOURSE_CERT_KEY"
COURSE = "Deep Dive into Batch Normalization"
UNSIGNED_WARNING = "unsigned: self-issued, not signed by an instructor"


def load_key(key_file=None) -> bytes | None:
    """The HMAC key from `key_file` (its bytes, surrounding whitespace removed), else from
    $BNCOURSE_CERT_KEY, else None."""
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ValueError(f"--key-file {key_file}: no such file")
        key = path.read_bytes().strip()
        if not key:
            raise ValueError(f"--key-file {key_file} is empty")
        return key
    env = os.environ.get(KEY_ENV, "").strip()
    return env.encode("utf-8") if env else None


def canonical(fields: dict) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sign(fields: dict, key: bytes) -> str:
    """HMAC-SHA256 of the canonical JSON of `fields` (every field but `signature`)."""
    payload = {k: v for k, v in fields.items() if k != "signature"}
    return hmac.new(key, canonical(payload), hashlib.sha256).hexdigest()


def _module_scores(report) -> dict:
    return {m: {k: v[k] for k in ("points", "max_points", "score", "passed")}
            for m, v in report.modules().items()}


def build_record(name: str, folder: Path, report, key: bytes | None, date=None) -> dict:
    """The JSON record of a certificate for a graded folder."""
    files = []
    for nb in report.notebooks:
        if nb.module in registry.REQUIRED_MODULES:
            files.append({"module": nb.module, "sha256": nb.sha256,
                          "path": Path(nb.path).relative_to(folder).as_posix()
                          if Path(nb.path).is_relative_to(folder) else nb.path})
    record = {
        "course": COURSE,
        "name": name,
        "date": (date or _dt.datetime.now(_dt.timezone.utc).date()).isoformat(),
        "course_version": __version__,
        "grader_version": GRADER_VERSION,
        "pass_mark": registry.PASS_MARK,
        "required_modules": list(registry.REQUIRED_MODULES),
        "modules": _module_scores(report),
        "files": files,
        "path": folder.as_posix(),
        "signed": key is not None,
    }
    record["signature"] = sign(record, key) if key is not None else None
    return record


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "learner"


def _write_pdf(record: dict, path: Path, record_name: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(11.69, 8.27))  # A4 landscape
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()

    def text(y, s, **kwargs):
        ax.text(0.5, y, s, ha="center", va="center", transform=ax.transAxes, **kwargs)

    ax.add_patch(Rectangle((0.03, 0.04), 0.94, 0.92, fill=False, linewidth=3,
                           edgecolor="#1f3b73", transform=ax.transAxes))
    text(0.87, "Certificate of completion", fontsize=30, weight="bold", color="#1f3b73")
    text(0.79, record["course"], fontsize=18)
    text(0.70, "awarded to", fontsize=13, style="italic")
    text(0.62, record["name"], fontsize=28, weight="bold")
    text(0.54, f"on {record['date']}, course version {record['course_version']}", fontsize=12)
    # The module rows share the band between the date line and the footer, however many
    # modules the course requires: rows get closer and the type smaller as modules are added.
    modules = sorted(record["modules"].items())
    row = min(0.045, 0.26 / max(len(modules), 1))
    for i, (module, v) in enumerate(modules):
        points = f"{v['points']}/{v['max_points']}"
        text(0.46 - row * (i + 0.5), f"module {module}:  {points:>5} points  "
             f"({v['score']:>4.0%})  passed", fontsize=min(13, 280 * row), family="monospace")
    status = ("signed by an instructor (HMAC-SHA256)" if record["signed"]
              else "UNSIGNED: self-issued, not signed by an instructor")
    text(0.17, f"Pass mark {record['pass_mark']:.0%} per module. Record: {status}.", fontsize=10)
    text(0.12, f"Verify with:  bncourse verify {record_name}   (re-grades the notebooks and "
               "checks their SHA-256)", fontsize=10, family="monospace")
    digest = hashlib.sha256(canonical(record)).hexdigest()
    text(0.08, f"record SHA-256 {digest}", fontsize=8, family="monospace", color="0.4")
    fig.savefig(path, format="pdf")


def issue(name: str, path="exercises/", out="certificates/", key: bytes | None = None,
          limits: SandboxLimits = SandboxLimits()) -> int:
    """Grade `path`; if every required module passes, write the PDF and JSON record to `out`.
    Returns 0 when issued, 1 otherwise (nothing written)."""
    name = " ".join(str(name).split())
    if not name or len(name) > 120:
        raise ValueError("--name must be 1 to 120 characters")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--path {path}: no such folder")
    report = grade_path(folder, limits, modules=registry.REQUIRED_MODULES)
    print(report.text(), end="")
    modules = report.modules()
    problems = []
    for module in registry.REQUIRED_MODULES:
        counted = [nb for nb in report.notebooks if nb.module == module]
        if module not in modules:
            problems.append(f"module {module}: missing (expected {registry.NOTEBOOKS[module]} "
                            f"in {folder})")
        elif len(counted) > 1:
            problems.append(f"module {module}: {len(counted)} notebooks; keep one")
        elif not modules[module]["passed"]:
            problems.append(f"module {module}: {modules[module]['score']:.0%}, below the pass "
                            f"mark of {registry.PASS_MARK:.0%}")
    if problems:
        print("No certificate yet:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    record = build_record(name, folder, report, key)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"certificate_{_slug(name)}_{record['date']}"
    record_path, pdf_path = out / f"{stem}.json", out / f"{stem}.pdf"
    record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    _write_pdf(record, pdf_path, record_path.name)
    print(f"Certificate issued: {pdf_path} and {record_path}"
          + ("" if key is not None else f" ({UNSIGNED_WARNING})"))
    return 0


REQUIRED_FIELDS = {"course": str, "name": str, "date": str, "course_version": str,
                   "grader_version": int, "pass_mark": (int, float), "required_modules": list,
                   "modules": dict, "files": list, "path": str, "signed": bool}


def check_record(record, key: bytes | None, folder=None, limits: SandboxLimits = SandboxLimits(),
                 base: Path | None = None) -> tuple[list[str], list[str]]:
    """(failures, warnings) for a certificate record; no failures means verified."""
    failures, warnings = [], []
    if not isinstance(record, dict):
        return ["the record is not a JSON object"], warnings
    for field, kind in REQUIRED_FIELDS.items():
        if not isinstance(record.get(field), kind):
            failures.append(f"field {field!r} missing or of the wrong type")
    if failures:
        return failures, warnings
    signature = record.get("signature")
    if key is not None:
        if not record["signed"] or not isinstance(signature, str):
            failures.append("a key was given but the record is not signed "
                            f"({UNSIGNED_WARNING})")
        elif not hmac.compare_digest(sign(record, key), signature):
            failures.append("signature does not match: the record was edited, or signed with "
                            "another key")
    elif record["signed"]:
        warnings.append("the record says it is signed, but no key was given: signature not "
                        f"checked (use --key-file or ${KEY_ENV})")
    else:
        warnings.append(UNSIGNED_WARNING)
    if record["pass_mark"] < registry.PASS_MARK or set(record["required_modules"]) != set(
            registry.REQUIRED_MODULES):
        failures.append("the record's pass mark or required modules differ from the course's")
    folder = Path(folder) if folder else Path(record["path"])
    if not folder.is_dir() and base is not None and (base / record["path"]).is_dir():
        folder = base / record["path"]
    graded = {}
    for entry in record["files"]:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str)
                                                  for k in ("module", "path", "sha256")):
            failures.append("malformed entry in 'files'")
            continue
        nb_path = folder / entry["path"]
        if not nb_path.is_file():
            failures.append(f"{nb_path}: not found (use --path to say where the notebooks are)")
            continue
        digest = file_sha256(nb_path)
        if digest != entry["sha256"]:
            failures.append(f"{nb_path}: SHA-256 differs from the record (the file changed "
                            "since the certificate was issued)")
            continue
        graded[entry["module"]] = grade_notebook(nb_path, limits)
    for module in registry.REQUIRED_MODULES:
        claimed = record["modules"].get(module)
        if not isinstance(claimed, dict):
            failures.append(f"module {module}: no score in the record")
            continue
        nb = graded.get(module)
        if nb is None:
            if not any(e.get("module") == module for e in record["files"]
                       if isinstance(e, dict)):
                failures.append(f"module {module}: no graded file in the record")
            continue
        if nb.module != module:
            failures.append(f"module {module}: the file is a module {nb.module} notebook")
        elif (nb.points, nb.max_points) != (claimed.get("points"), claimed.get("max_points")):
            failures.append(f"module {module}: re-graded {nb.points}/{nb.max_points}, the "
                            f"record says {claimed.get('points')}/{claimed.get('max_points')}")
        elif not isinstance(claimed.get("score"), (int, float)) or abs(
                claimed["score"] - nb.score) > 1e-4:  # the record rounds to 4 places
            failures.append(f"module {module}: re-graded {nb.score:.0%}, the record says "
                            f"{claimed.get('score')!r}")
        elif not nb.passed:
            failures.append(f"module {module}: re-graded {nb.score:.0%}, below the pass mark")
        if claimed.get("passed") is not True:
            failures.append(f"module {module}: the record does not show it passed")
    return failures, warnings


def verify(record_path, key: bytes | None = None, folder=None,
           limits: SandboxLimits = SandboxLimits()) -> int:
    """Print what was checked; 0 when the record is verified, 1 when not."""
    record_path = Path(record_path)
    if not record_path.is_file():
        raise ValueError(f"{record_path}: no such file")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        print(f"NOT VERIFIED: {record_path} is not a JSON record ({exc})")
        return 1
    failures, warnings = check_record(record, key, folder, limits, base=record_path.parent)
    for warning in warnings:
        print(f"warning: {warning}")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        print(f"NOT VERIFIED: {record_path}")
        return 1
    print(f"VERIFIED: {record.get('name')}, {record.get('date')}, course version "
          f"{record.get('course_version')}: modules "
          + ", ".join(f"{m} {v['score']:.0%}" for m, v in sorted(record["modules"].items())))
    return 0
