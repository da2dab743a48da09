"""An instructor's batch: `bncourse grade CLASS/` where CLASS holds one folder per learner.

Each learner's folder is graded in its own worker process (a pool of `workers`), and inside it
each notebook's code runs in its own sandboxed child, as for one learner: learners never share
a process, a folder or a namespace, and a submission that hangs or crashes costs only its own
time limits while the other workers go on. Then, after every worker has ended, the gradebook
is written (OUT/gradebook.csv and OUT/gradebook.json) and, with `key_file`, the key is read and
one signed credential (JSON + PDF) is written to OUT/credentials/ per learner who passed every
required lesson. A learner is named by their folder's name.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import secrets
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from bncourse._version import __version__
from bncourse.grading import registry
from bncourse.grading.sandbox import SandboxLimits

__all__ = ["is_batch", "learner_folders", "grade_learner", "grade_class", "write_gradebook",
           "main"]


def _has_notebooks(folder: Path) -> bool:
    return any(".ipynb_checkpoints" not in p.parts for p in folder.rglob("*.ipynb"))


def learner_folders(path) -> list[Path]:
    """The learners' folders of a class folder: its sub-folders holding notebooks, by name."""
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and _has_notebooks(p))


def is_batch(path) -> bool:
    """True for a folder of learners' folders: no notebook of its own, at least one sub-folder
    with notebooks, and not the course's own checkout (which holds exercises/ and solutions/)."""
    path = Path(path)
    if not path.is_dir() or any(path.glob("*.ipynb")):
        return False
    if (path / "pyproject.toml").is_file() and (path / "notebooks").is_dir():
        return False
    return bool(learner_folders(path))


def grade_learner(folder: str, limits: SandboxLimits, seed: int) -> dict:
    """Grade one learner's folder (runs in a worker process). Never raises: a folder that
    cannot be graded, or a grader error, is the entry's `error`."""
    from bncourse.grading.certificate.issue import problems
    from bncourse.grading.grade import GraderError, grade_path

    start = time.perf_counter()
    entry = {"learner": Path(folder).name, "folder": str(folder), "seed": seed, "report": None,
             "error": None, "problems": []}
    try:
        report = grade_path(folder, limits, seed=seed, workers=1)  # learners run side by side
        entry["report"] = report
        entry["problems"] = problems(report, folder)
    except GraderError as exc:
        entry["error"] = f"grader error: {exc}"
    except (ValueError, OSError) as exc:
        entry["error"] = str(exc)
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return entry


def grade_class(path, limits: SandboxLimits = SandboxLimits(), seed: int | None = None,
                workers: int | None = None, on_done=None) -> list[dict]:
    """Grade every learner's folder under `path` in parallel worker processes; one entry per
    learner (see `grade_learner`), in folder-name order."""
    folders = learner_folders(path)
    if not folders:
        raise ValueError(f"{path}: no learners' folders with notebooks")
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    seeds = {f: seed if seed is not None else secrets.randbelow(2**31) for f in folders}
    # "spawn": each worker is a fresh interpreter, inheriting nothing of this process's state.
    context = multiprocessing.get_context("spawn")
    entries = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(folders)), mp_context=context) as pool:
        futures = {pool.submit(grade_learner, str(f), limits, seeds[f]): f for f in folders}
        for future in as_completed(futures):
            folder = futures[future]
            try:
                entries[folder] = future.result()
            except Exception as exc:  # a worker that died: that learner's error only
                entries[folder] = {"learner": folder.name, "folder": str(folder),
                                   "seed": seeds[folder], "report": None, "problems": [],
                                   "error": f"grader error: the worker process failed ({exc})",
                                   "seconds": None}
            if on_done:
                on_done(entries[folder])
    return [entries[f] for f in folders]


def _module_cells(entry) -> dict:
    modules = entry["report"].modules() if entry["report"] else {}
    return {m: modules.get(m) for m in registry.NOTEBOOKS}


def _passed(entry) -> bool:
    return entry["report"] is not None and not entry["error"] and not entry["problems"]


def _verdict(entry) -> str:
    """One line: "passed", or the scores, what is missing and other problems."""
    if entry["error"]:
        return entry["error"]
    if _passed(entry):
        return "passed"
    modules = entry["report"].modules()
    parts = [", ".join(f"{m} {v['score']:.0%}" for m, v in modules.items())] if modules else []
    missing = [p.split(":")[0].split()[-1] for p in entry["problems"] if ": missing" in p]
    if missing:
        parts.append("missing " + " ".join(missing))
    parts += [p for p in entry["problems"] if ": missing" not in p and "below the pass" not in p]
    return "not passed: " + "; ".join(parts)


def write_gradebook(entries, out) -> tuple[Path, Path]:
    """OUT/gradebook.csv (one row a learner: passed, each module's points and score) and
    OUT/gradebook.json (the same plus every check's result)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "gradebook.csv", out / "gradebook.json"
    modules = list(registry.NOTEBOOKS)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", "passed"] + [f"{m} points" for m in modules]
                        + [f"{m} score" for m in modules] + ["seed", "credential", "problems"])
        for e in entries:
            cells = _module_cells(e)
            writer.writerow(
                [e["learner"], "yes" if _passed(e) else "no"]
                + [f"{c['points']}/{c['max_points']}" if c else "" for c in cells.values()]
                + [f"{c['score']:.4f}" if c else "" for c in cells.values()]
                + [e["seed"], e.get("credential") or "",
                   "; ".join(([e["error"]] if e["error"] else []) + e["problems"])])
    data = {"course_version": __version__, "pass_mark": registry.PASS_MARK,
            "required_modules": list(registry.REQUIRED_MODULES),
            "learners": [{"learner": e["learner"], "folder": e["folder"], "seed": e["seed"],
                          "passed": _passed(e), "seconds": e["seconds"], "error": e["error"],
                          "problems": e["problems"], "credential": e.get("credential"),
                          "modules": e["report"].modules() if e["report"] else {},
                          "report": e["report"].to_json() if e["report"] else None}
                         for e in entries]}
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return csv_path, json_path


def main(path, out="gradebook", limits: SandboxLimits = SandboxLimits(), key_file=None,
         seed: int | None = None, workers: int | None = None,
         issuer_name: str | None = None) -> int:
    """`bncourse grade CLASS/`: grade, write the gradebook and (with a key) the credentials.
    0 when every learner was graded; 3 when the grader failed for one or more."""
    from bncourse.grading.certificate.issue import (DEFAULT_ISSUER, check_name, make_facts,
                                                    missing_note, write_certificate)
    from bncourse.grading.certificate.keys import did_key, load_private_key
    from bncourse.grading.grade import check_limits

    if key_file is not None and not Path(key_file).is_file():
        raise ValueError(f"--key-file {key_file}: no such file")  # checked now, read after
    issuer_name = check_name(issuer_name or DEFAULT_ISSUER, "--issuer")
    check_limits(limits)
    folders = learner_folders(path)
    print(f"Grading {len(folders)} learners in {path} ...")

    def on_done(e):
        print(f"  {e['learner']}: {_verdict(e)} ({e['seconds']} s)", flush=True)

    entries = grade_class(path, limits, seed, workers, on_done)
    # Every worker, and so every process that ran learner code, has ended: read the key now.
    if key_file is not None:
        key = load_private_key(key_file)
        issuer = did_key(key.public_key())
        for e in entries:
            if _passed(e):
                try:
                    name = check_name(e["learner"], "the learner's folder name")
                except ValueError as exc:
                    e["credential"] = f"none: {exc}"  # passed; the name cannot be printed
                    continue
                facts = make_facts(name, e["report"], issuer, issuer_name)
                record, _, missing = write_certificate(facts, Path(out) / "credentials", key)
                e["credential"] = str(record)
                if missing:
                    print(f"  {e['learner']}: {missing_note(missing)}")
    csv_path, json_path = write_gradebook(entries, out)
    passed = sum(_passed(e) for e in entries)
    print(f"{passed} of {len(entries)} learners passed. Gradebook: {csv_path} and {json_path}"
          + (f"; credentials in {Path(out) / 'credentials'}" if key_file else ""))
    return 3 if any(e["error"] and e["error"].startswith("grader error") for e in entries) else 0
