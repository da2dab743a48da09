"""Certificates anyone can verify: Ed25519 keys, the Open Badges 3.0 credential, its proof,
`verify` (every field edited, the proof removed or swapped, another issuer's key), re-grading
only inside the folder with the record's seed, file names that never collide, the PDF."""
import copy
import importlib
import json
import os
import shutil
import stat
import struct

import pytest

from bncourse.cli import main
from bncourse.grading import registry
from bncourse.grading.certificate import (build_credential, canonical, check_record, did_key,
                                          facts_from_credential, keygen, load_private_key,
                                          load_public_key, make_facts, sign_credential,
                                          write_certificate)
from bncourse.grading.certificate.credential import SELF_ISSUED, notebook_uri, sha256_from_uri
from bncourse.grading.certificate.keys import base58btc, from_base58btc, public_key_from_did
from bncourse.grading.certificate.pdf import (_name_layout, font_families, lesson_grid,
                                              write_pdf)
from bncourse.grading.grade import GradeReport, NotebookReport
from bncourse.grading.results import CheckResult, ExerciseResult

from grading_helpers import SOLUTIONS, folder_hashes

# The package exports the functions `issue` and `verify`; their modules by name:
issue_module = importlib.import_module("bncourse.grading.certificate.issue")
verify_module = importlib.import_module("bncourse.grading.certificate.verify")


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(private key, public key, public_key.pem path) of an instructor, and of another one."""
    base = tmp_path_factory.mktemp("keys")
    made = []
    for who in ("instructor", "other"):
        private_path, public_path = keygen(base / who)
        made.append((load_private_key(private_path), load_public_key(public_path), public_path,
                     private_path))
    return made


def fake_report(folder, points=5, seed=7, modules=None):
    """A GradeReport as if each module scored `points` of 5, without grading."""
    notebooks = []
    for module in modules or registry.REQUIRED_MODULES:
        filename = registry.NOTEBOOKS[module]
        result = ExerciseResult(f"{module}.x", [CheckResult("c", int(i < points), 1)
                                                for i in range(5)])
        notebooks.append(NotebookReport(str(folder / filename), f"{int(module):02x}" * 32,
                                        module, [result]))
    return GradeReport(notebooks, seed=seed)


@pytest.fixture
def signed(keys, tmp_path):
    private, public, _, _ = keys[0]
    facts = make_facts("Ada Lovelace", fake_report(tmp_path), did_key(public), "Prof. Turing")
    return sign_credential(build_credential(facts), private)


def leaves(value, path=()):
    """Every (path, leaf value) of a JSON value."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from leaves(v, path + (key,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, path + (i,))
    else:
        yield path, value


def edited(value):
    """A different JSON value of a similar kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("X" if not value.endswith("X") else "Y") if value else "X"
    return "X"


def set_path(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


# --- keys -----------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path):
    private_path, public_path = keygen(tmp_path / "k")
    assert private_path.name == "private_key.pem" and public_path.name == "public_key.pem"
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    assert b"PRIVATE KEY" in private_path.read_bytes()
    assert b"PUBLIC KEY" in public_path.read_bytes()
    private, public = load_private_key(private_path), load_public_key(public_path)
    assert did_key(private.public_key()) == did_key(public)
    with pytest.raises(ValueError, match="private_key.pem already exists"):
        keygen(tmp_path / "k")


@pytest.mark.parametrize("content, loader, message", [
    (None, load_private_key, "--key-file .*: no such file"),
    (b"", load_private_key, "--key-file .* is empty"),
    (b"not a key", load_private_key, "--key-file .*: not an unencrypted PEM private key"),
    (None, load_public_key, "--public-key .*: no such file"),
    (b"-----BEGIN PRIVATE KEY-----\n", load_public_key, "is a private key: give the public"),
    (b"garbage", load_public_key, "--public-key .*: not a PEM public key"),
])
def test_key_files_are_checked_with_messages_naming_the_option(tmp_path, content, loader,
                                                              message):
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        loader(path)


def test_did_key_round_trips_and_base58(keys):
    _, public, _, _ = keys[0]
    did = did_key(public)
    assert did.startswith("did:key:z6Mk")  # the Ed25519 multicodec prefix, as did:key specifies
    assert did_key(public_key_from_did(did)) == did
    for data in (b"", b"\0\0\1", bytes(range(40))):
        assert from_base58btc(base58btc(data)) == data
    assert base58btc(b"hello world") == "StV1DL6CwTryKyV"  # the base58 test vector
    with pytest.raises(ValueError, match="not an Ed25519 did:key"):
        public_key_from_did("did:web:example.com")
    with pytest.raises(ValueError, match="character '0'"):
        from_base58btc("10")


# --- canonical JSON (RFC 8785) --------------------------------------------------------------

@pytest.mark.parametrize("bits, text", [  # RFC 8785 appendix B
    ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"), ("4340000000000000", "9007199254740992"),
    ("4430000000000000", "295147905179352830000"), ("44b52d02c7e14af6", "1e+23"),
    ("444b1ae4d6e2ef50", "1e+21"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("41b3de4355555555", "333333333.3333333"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
])
def test_canonical_numbers(bits, text):
    assert canonical(struct.unpack(">d", bytes.fromhex(bits))[0]) == text.encode()


def test_canonical_sorts_keys_by_utf16_and_escapes_like_ecmascript():
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    out = canonical({k: 0 for k in keys}).decode()
    order = ["\\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    positions = [out.index(f'"{k}"') for k in order]
    assert positions == sorted(positions)
    assert canonical({"b": [1, True, None, "é\n\u001f"], "a": 0.5}) == \
        '{"a":0.5,"b":[1,true,null,"é\\n\\u001f"]}'.encode()
    with pytest.raises(ValueError, match="I-JSON"):
        canonical(2**60)


# --- the credential -------------------------------------------------------------------------

def test_the_credential_is_an_open_badges_3_credential(signed, keys):
    _, public, _, _ = keys[0]
    assert signed["@context"][:2] == ["https://www.w3.org/ns/credentials/v2",
                                      "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"]
    assert signed["type"] == ["VerifiableCredential", "OpenBadgeCredential"]
    assert signed["issuer"] == {"id": did_key(public), "type": ["Profile"],
                                "name": "Prof. Turing"}
    assert signed["validFrom"].endswith("Z") and signed["id"].startswith("urn:uuid:")
    subject = signed["credentialSubject"]
    assert subject["identifier"][0]["identityHash"] == "Ada Lovelace"
    achievement = subject["achievement"]
    assert achievement["type"] == ["Achievement"] and achievement["criteria"]["narrative"]
    assert [d["name"].split(":")[0] for d in achievement["resultDescription"]] == \
        [f"Lesson {m}" for m in registry.REQUIRED_MODULES]
    assert [r["value"] for r in subject["result"]] == ["5"] * len(registry.REQUIRED_MODULES)
    assert all(d["requiredValue"] == "4" for d in achievement["resultDescription"])  # 80% of 5
    assert sha256_from_uri(signed["evidence"][0]["id"]) == "02" * 32
    proof = signed["proof"]
    assert proof["type"] == "DataIntegrityProof" and proof["cryptosuite"] == "eddsa-jcs-2022"
    assert proof["verificationMethod"].startswith(did_key(public) + "#")
    assert check_record(signed, public) == ([], [])


def test_notebook_uri_round_trips():
    digest = "ab" * 32
    assert notebook_uri(digest).startswith("ni:///sha-256;")
    assert sha256_from_uri(notebook_uri(digest)) == digest


def test_every_field_edited_is_rejected(signed, keys):
    _, public, _, _ = keys[0]
    paths = list(leaves(signed))
    assert len(paths) > 100
    for path, value in paths:
        record = copy.deepcopy(signed)
        set_path(record, path, edited(value))
        failures, _ = check_record(record, public)
        assert failures, f"editing {path} went unnoticed"
    record = copy.deepcopy(signed)
    record["credentialSubject"]["extra"] = "field"
    failures, _ = check_record(record, public)
    assert any("'extra'] is not a field the course writes" in f for f in failures)


def test_an_edited_name_names_the_signature(signed, keys):
    _, public, _, _ = keys[0]
    record = copy.deepcopy(signed)
    record["credentialSubject"]["identifier"][0]["identityHash"] = "Mallory"
    failures, _ = check_record(record, public)
    assert failures == ["the signature does not match the credential: a field was edited "
                        "after signing, or the proof comes from another credential"]


def test_the_proof_removed_is_rejected(signed, keys):
    _, public, _, _ = keys[0]
    record = {k: v for k, v in signed.items() if k != "proof"}
    failures, _ = check_record(record, public)
    assert "the record has no proof: it is unsigned (self-issued)" in failures


def test_a_proof_swapped_from_another_credential_is_rejected(signed, keys, tmp_path):
    private, public, _, _ = keys[0]
    other = make_facts("Bob", fake_report(tmp_path), did_key(public), "Prof. Turing")
    other = sign_credential(build_credential(other), private)
    record = dict(signed, proof=other["proof"])
    failures, _ = check_record(record, public)
    assert any("the signature does not match" in f for f in failures)


def test_another_issuers_key_is_rejected(signed, keys, tmp_path):
    _, _, _, _ = keys[0]
    other_private, other_public, _, _ = keys[1]
    failures, _ = check_record(signed, other_public)
    assert any(f.startswith("signed by another issuer: the record's key is did:key:")
               for f in failures)
    # Edited, then re-signed by someone else: fine on its own terms, not the instructor's.
    facts = make_facts("Mallory", fake_report(tmp_path), did_key(other_public), "Prof. Turing")
    forged = sign_credential(build_credential(facts), other_private)
    failures, _ = check_record(forged, keys[0][1])
    assert any(f.startswith("signed by another issuer") for f in failures)


def test_a_signed_record_without_a_public_key_is_not_verified(signed):
    failures, _ = check_record(signed, None)
    assert len(failures) == 1 and failures[0].startswith("no --public-key given")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["grading"].update(passMark=0.5), "pass mark 50% is below the course's 80%"),
    (lambda r: r["grading"]["lessons"][0].update(points=1), "lesson 02: 1/5 is below the pass"),
    (lambda r: r["grading"]["lessons"].pop(), "required, but the record holds no result"),
])
def test_the_pass_rule_is_checked_on_the_record(tmp_path, edit, message):
    facts = make_facts("Ada", fake_report(tmp_path))
    record = build_credential(facts)
    edit(record["grading"] and record)
    rebuilt = build_credential(facts_from_credential(record))  # consistent: only the rule fails
    failures, _ = check_record(rebuilt, None)
    assert any(message in f for f in failures), failures


def test_not_a_credential():
    assert check_record([], None)[0] == ["not a bncourse credential: the record is not a JSON "
                                         "object"]
    failures, _ = check_record({"grading": {}}, None)
    assert failures[0].startswith("not a bncourse credential: credential['credentialSubject']")


# --- verify: the command --------------------------------------------------------------------

def _write(record, path):
    path.write_text(json.dumps(record, ensure_ascii=False))
    return path


def test_verify_command_from_any_folder(signed, keys, tmp_path, monkeypatch, capsys):
    _, _, public_path, _ = keys[0]
    record = _write(signed, tmp_path / "record.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["verify", str(record), "--public-key", str(public_path)]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED: signed by Prof. Turing (did:key:" in out and "Ada Lovelace" in out
    assert main(["verify", str(record), "--public-key", str(keys[1][2])]) == 1
    out = capsys.readouterr().out
    assert "FAIL: signed by another issuer" in out and "NOT VERIFIED" in out


def test_verify_command_usage_errors(signed, tmp_path, capsys):
    record = _write(signed, tmp_path / "record.json")
    assert main(["verify", str(tmp_path / "missing.json")]) == 2
    assert main(["verify", str(record), "--public-key", str(tmp_path / "nope.pem")]) == 2
    assert "bncourse verify: --public-key" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{ edited")
    assert main(["verify", str(tmp_path / "bad.json")]) == 1
    assert "NOT VERIFIED" in capsys.readouterr().out


def test_an_unsigned_record_says_so_and_never_prints_verified(tmp_path, keys, monkeypatch,
                                                             capsys):
    report = fake_report(tmp_path)
    record = build_credential(make_facts("Ada", report))
    assert record["issuer"]["id"] == SELF_ISSUED and "proof" not in record
    path = _write(record, tmp_path / "record.json")
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "VERIFIED:" not in out.replace("NOT VERIFIED:", "")
    assert "unsigned (self-issued)" in out
    assert main(["verify", str(path), "--public-key", str(keys[0][2])]) == 1
    assert "FAIL: the record is unsigned (self-issued)" in capsys.readouterr().out
    # With a re-grade that matches, it works and says so.
    monkeypatch.setattr(verify_module, "regrade_failures", lambda facts, folder, limits: [])
    assert main(["verify", str(path), "--regrade", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("SELF-ISSUED (unsigned, no instructor vouches for it)") == 1
    assert "VERIFIED" not in out


def test_an_unsigned_record_with_an_edited_name_does_not_verify_as_signed(tmp_path, capsys):
    record = build_credential(make_facts("Ada", fake_report(tmp_path)))
    record["credentialSubject"]["identifier"][0]["identityHash"] = "Mallory"
    path = _write(record, tmp_path / "record.json")
    assert main(["verify", str(path)]) == 1
    assert "VERIFIED: " not in capsys.readouterr().out.replace("NOT VERIFIED: ", "")


# --- verify --regrade: only inside the folder, the record's seed ----------------------------

@pytest.fixture
def regrade_folder(tmp_path, monkeypatch):
    """A folder whose notebooks hash as the fake report says, graded by a stub that records
    the seed it was given."""
    from bncourse.grading import grade

    folder = tmp_path / "work"
    folder.mkdir()
    report = fake_report(folder)
    hashes = {}
    for nb in report.notebooks:
        path = folder / os.path.basename(nb.path)
        path.write_text(f"notebook {nb.module}")
        hashes[path.name] = grade._sha256(path.read_bytes())
    report.notebooks = [NotebookReport(nb.path, hashes[os.path.basename(nb.path)], nb.module,
                                       nb.exercises) for nb in report.notebooks]
    seeds = []

    def fake_grade(path, limits, seed=None, display_path=None):
        seeds.append(seed)
        return next(nb for nb in report.notebooks if nb.path == str(path))

    monkeypatch.setattr(grade, "grade_notebook", fake_grade)
    return folder, report, seeds


def test_regrade_uses_the_seed_the_record_holds(regrade_folder, keys):
    folder, report, seeds = regrade_folder
    private, public, _, _ = keys[0]
    report.seed = 123456
    record = sign_credential(build_credential(make_facts("Ada", report, did_key(public))),
                             private)
    assert check_record(record, public, regrade=folder) == ([], [])
    assert seeds == [123456] * len(registry.REQUIRED_MODULES)


def test_regrade_reads_only_inside_the_folder(regrade_folder, tmp_path):
    folder, report, seeds = regrade_folder
    secret = tmp_path / "outside.ipynb"
    secret.write_text("outside")
    record = build_credential(make_facts("Ada", report))
    record["grading"]["lessons"][0]["file"] = "../outside.ipynb"
    record["grading"]["lessons"][1]["file"] = str(secret)
    (folder / registry.NOTEBOOKS["04"]).unlink()
    (folder / registry.NOTEBOOKS["04"]).symlink_to(secret)
    rebuilt = build_credential(facts_from_credential(record))
    failures, _ = check_record(rebuilt, None, regrade=folder)
    assert any("lesson 02: the record names '../outside.ipynb', not a plain file name" in f
               for f in failures)
    assert any(f"lesson 03: the record names {str(secret)!r}" in f for f in failures)
    assert any("lesson 04:" in f and "links to outside" in f for f in failures)
    assert seeds == []  # nothing is graded until every file is in place


def test_regrade_detects_a_changed_notebook_and_a_different_score(regrade_folder, keys):
    folder, report, seeds = regrade_folder
    record = build_credential(make_facts("Ada", report))
    report.notebooks[2].exercises[0].checks[0] = CheckResult("c", 0, 1)  # lesson 04 re-grades 4/5
    failures, _ = check_record(record, None, regrade=folder)
    assert failures == ["lesson 04: re-graded 4/5 (seed 7), the record says 5/5; lost: 04.x: c: "]
    (folder / registry.NOTEBOOKS["03"]).write_text("edited")
    seeds.clear()
    failures, _ = check_record(record, None, regrade=folder)
    assert failures == ["lesson 03: 03_backward_exercises.ipynb: SHA-256 differs from the record "
                        "(the file changed since the certificate was issued)"]
    assert seeds == []


def test_a_regrade_that_hit_the_time_limit_says_so(regrade_folder):
    folder, report, _ = regrade_folder
    record = build_credential(make_facts("Ada", report))
    report.notebooks[4].exercises[0].checks[0] = CheckResult(
        "trained", 0, 1, "stopped after 20 s: an infinite loop? (time limit per check)")
    [failure] = check_record(record, None, regrade=folder)[0]
    assert failure.startswith("lesson 06: re-graded 4/5 (seed 7), the record says 5/5; lost: "
                              "06.x: trained: stopped after 20 s")
    assert failure.endswith("(a check hit the time limit of 20 s: on a busy machine, re-run "
                            "with a larger --timeout)")


# --- issuing --------------------------------------------------------------------------------

def test_file_names_never_collide(tmp_path, keys):
    private, public, _, _ = keys[0]
    written = set()
    for name in ("李雷", "王芳", "李雷", "Zoë", "Zoe"):
        facts = make_facts(name, fake_report(tmp_path), did_key(public))
        record_path, pdf_path, _ = write_certificate(facts, tmp_path / "out", private)
        assert record_path not in written and pdf_path.exists()
        written.add(record_path)
        assert facts_from_credential(json.loads(record_path.read_text())).name == name
    assert len(list((tmp_path / "out").glob("*.json"))) == 5


def test_the_key_is_read_only_after_grading(tmp_path, keys, monkeypatch, capsys):
    _, _, _, private_path = keys[0]
    events = []
    (tmp_path / "work").mkdir()

    def fake_grade_path(*args, **kwargs):
        events.append("grade")
        return fake_report(tmp_path / "work")

    def spy_load(path):
        events.append("read key")
        return load_private_key(path)

    from bncourse.grading import grade

    monkeypatch.setattr(grade, "grade_path", fake_grade_path)
    monkeypatch.setattr(issue_module, "load_private_key", spy_load)
    status = issue_module.issue("Ada", tmp_path / "work", tmp_path / "out", private_path)
    assert status == 0 and events == ["grade", "read key"]
    assert "signed by did:key:" in capsys.readouterr().out


@pytest.mark.parametrize("points, drop, corrupt, message", [
    (3, 0, False, "module 02: 60%, below the pass mark of 80%"),
    (5, 1, False, "module 12: missing (expected 12_capstone_exercises.ipynb"),  # the last required
    (5, 0, True, "module 03: 03_backward_exercises.ipynb is corrupted"),
])
def test_no_certificate_and_why(tmp_path, monkeypatch, capsys, points, drop, corrupt, message):
    from bncourse.grading import grade

    (tmp_path / "work").mkdir()
    report = fake_report(tmp_path / "work", points=points)
    report.notebooks = report.notebooks[:len(report.notebooks) - drop]
    if corrupt:
        nb = report.notebooks[1]
        report.notebooks[1] = NotebookReport(nb.path, nb.sha256, nb.module,
                                             errors=["cannot be graded: corrupted (...)"])
    monkeypatch.setattr(grade, "grade_path", lambda *args, **kwargs: report)
    assert issue_module.issue("Bob", tmp_path / "work", tmp_path / "out") == 1
    assert message in capsys.readouterr().out and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, message", [
    ("", "--name must be 1 to 200 characters"), ("x" * 201, "--name must be 1 to 200"),
    ("Ada\u0000", "--name holds control characters: U\\+0000")])
def test_bad_names(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        issue_module.issue(name, tmp_path, tmp_path / "out")


# --- the PDF --------------------------------------------------------------------------------

def _measure(s, size):
    return len(s) * size / 1400  # 0.6 em a character on an 842 pt page: a stand-in


@pytest.mark.parametrize("name, size, lines", [
    ("Ada Lovelace", 30, 1),
    (" ".join(["Bartholomew"] * 4), 25, 1),  # shrunk, still one line
    (" ".join(["Bartholomew"] * 10), 25, 3),  # a 10-word name: wrapped before it gets small
    (" ".join(["Bartholomew"] * 20), 14, 3),  # 20 words: wrapped, then shrunk below 20 pt
    ("李" * 60, 30, 2),  # no spaces: split between characters
])
def test_name_layout_shrinks_then_wraps(name, size, lines):
    got_size, got_lines = _name_layout(name, _measure, 0.84)
    assert (got_size, len(got_lines)) == (size, lines)
    assert all(_measure(line, got_size) <= 0.84 for line in got_lines)
    assert "".join(got_lines).replace(" ", "") == name.replace(" ", "")


@pytest.mark.parametrize("n", range(1, 14))
def test_the_lesson_grid_fits_up_to_13_lessons(n):
    columns, rows, size = lesson_grid(n)
    assert columns * rows >= n and columns in (1, 2) and 8 <= size <= 12


def test_font_fallback_names_what_no_font_can_draw():
    families, missing = font_families("Ada Ελένη 李", candidates=[])  # no font at all
    assert families == ["DejaVu Sans"] and missing == list("AdaΕλένη李")
    # With DejaVu Sans only (matplotlib's own font): Latin, Greek, Cyrillic drawn, CJK named.
    from matplotlib import font_manager

    dejavu = font_manager.findfont("DejaVu Sans")
    families, missing = font_families("Ada Ελένη Жанна 李雷", candidates=[("DejaVu Sans",
                                                                          dejavu)])
    assert families == ["DejaVu Sans"] and missing == ["李", "雷"]
    # A font that has the characters is added to the families drawn with.
    families, missing = font_families("李", candidates=[("DejaVu Sans", dejavu),
                                                       ("Fake CJK", "fake.ttf")])
    assert missing == ["李"]  # an unreadable font file covers nothing


def test_write_pdf_draws_any_name_and_13_lessons(tmp_path):
    modules = [f"{i:02d}" for i in range(2, 15)]
    report = fake_report(tmp_path, modules=list(registry.REQUIRED_MODULES))
    facts = make_facts(" ".join(["Bartholomew"] * 10) + " 李雷", report)
    facts = facts.__class__(**{**facts.__dict__, "lessons": tuple(
        facts.lessons[0].__class__(m, "a lesson with a rather long title indeed", 5, 5,
                                   f"{m}.ipynb", "00" * 32) for m in modules)})
    missing = write_pdf(facts, tmp_path / "c.pdf", "c.json")
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    assert set(missing) <= {"李", "雷"}
    assert set(missing) == set(font_families("李雷")[1])


# --- one real run: solutions -> certificate -> verify --regrade -----------------------------

SLOW = ["--timeout", "120"]


@pytest.fixture(scope="module")
def issued(tmp_path_factory, keys):
    """A signed certificate for a copy of the solutions (one real grading run)."""
    base = tmp_path_factory.mktemp("cert")
    folder = base / "work"
    shutil.copytree(SOLUTIONS, folder)
    before = folder_hashes(folder)
    # A generous time limit: lesson 06's training check needs more than the default 20 s on
    # a busy machine, and this test is about the record, not about speed.
    status = main(["certificate", "--name", "Ada Lovelace", "--path", str(folder),
                   "--out", str(base / "out"), "--key-file", str(keys[0][3])] + SLOW)
    assert status == 0
    assert folder_hashes(folder) == before
    records = list((base / "out").glob("*.json"))
    assert len(records) == 1 and len(list((base / "out").glob("*.pdf"))) == 1
    return base, folder, records[0]


def test_issued_record_verifies_and_regrades(issued, keys, monkeypatch, capsys):
    base, folder, record_path = issued
    record = json.loads(record_path.read_text())
    assert {r["file"] for r in record["grading"]["lessons"]} == set(registry.NOTEBOOKS.values())
    monkeypatch.chdir(base.parent)
    assert main(["verify", str(record_path), "--public-key", str(keys[0][2]),
                 "--regrade", str(folder)] + SLOW) == 0
    out = capsys.readouterr().out
    assert "VERIFIED: signed by bncourse instructor" in out and "re-grade to the recorded" in out


def test_issued_record_fails_when_a_notebook_changed(issued, keys, tmp_path, capsys):
    _, folder, record_path = issued
    copy_folder = tmp_path / "work"
    shutil.copytree(folder, copy_folder)
    path = copy_folder / registry.NOTEBOOKS["03"]
    path.write_text(path.read_text().replace("(2 * h)", "(2.0 * h)"))
    assert main(["verify", str(record_path), "--public-key", str(keys[0][2]),
                 "--regrade", str(copy_folder)]) == 1
    assert "SHA-256 differs" in capsys.readouterr().out
