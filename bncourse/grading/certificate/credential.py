"""The certificate's record: an Open Badges 3.0 `OpenBadgeCredential`, signed with Ed25519.

The record is a W3C Verifiable Credential 2.0 (`@context` VC 2.0 then OB 3.0.3, `issuer`,
`validFrom`, a `credentialSubject` holding the achievement and one OB `Result` per lesson,
`evidence` naming each graded notebook by its SHA-256) with an embedded Data Integrity proof,
cryptosuite `eddsa-jcs-2022`: the Ed25519 signature of
SHA-256(JCS(proof options)) || SHA-256(JCS(credential without its proof)), where JCS is the
JSON Canonicalization Scheme (RFC 8785). JCS needs no JSON-LD processing, so verifying fetches
nothing; the course's own terms are an inline context, and the two published contexts are
bundled (`contexts.py`) for any JSON-LD processor that expands the record, offline.

Every credential is *built* from a few facts (`Facts`: who, when, issuer, the grading); the
verifier rebuilds it from the facts it holds and compares, so a field that is not one the
course writes is an error even in an unsigned record. The signature proves who issued the
record, not that the learner did the work: `verify --regrade` re-grades the notebooks.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bncourse.grading.certificate.keys import base58btc, did_key, from_base58btc, \
    public_key_from_did

__all__ = ["VC_CONTEXT", "OB_CONTEXT", "COURSE_CONTEXT", "SELF_ISSUED", "COURSE", "LessonResult",
           "Facts", "canonical", "build_credential", "facts_from_credential", "sign_credential",
           "check_proof", "CredentialError", "notebook_uri", "sha256_from_uri"]

VC_CONTEXT = "https://www.w3.org/ns/credentials/v2"
OB_CONTEXT = "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"
# The course's one extension term, defined inline: its value is a JSON literal (@json).
COURSE_CONTEXT = {"bncourse": "urn:bncourse:vocab#",
                  "grading": {"@id": "bncourse:grading", "@type": "@json"}}
COURSE = "Deep Dive into Batch Normalization"
SELF_ISSUED = "urn:bncourse:self-issued"
CRYPTOSUITE = "eddsa-jcs-2022"


class CredentialError(ValueError):
    """The record is not a credential this course issues (the message names the field)."""


# --- JSON Canonicalization Scheme (RFC 8785) ------------------------------------------------

def _number(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise CredentialError(f"integer {value} is outside the I-JSON range (RFC 8785)")
        return str(value)
    if not math.isfinite(value):
        raise CredentialError(f"{value} cannot be represented in JSON")
    if value == 0:
        return "0"  # -0 too
    # ECMAScript Number::toString: the shortest round-trip digits s (Python's repr finds the
    # same digits) and n with value = 0.s * 10**n, then one of four notations.
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    n = len(whole.lstrip("0")) + int(exponent or 0) if whole.lstrip("0") else \
        int(exponent or 0) - (len(fraction) - len(fraction.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        text = (digits[0] + ("." + digits[1:] if k > 1 else "")
                + f"e{'+' if e > 0 else '-'}{abs(e)}")
    return sign + text


def _jcs(value) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return "null" if value is None else _number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # the escapes RFC 8785 section 3.2.2.2 uses
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CredentialError("JSON object keys must be strings")
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))  # by UTF-16 code units
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_jcs(value[k])}"
                              for k in keys) + "}"
    raise CredentialError(f"a {type(value).__name__} is not JSON")


def canonical(value) -> bytes:
    """RFC 8785 canonical JSON bytes (UTF-8) of a JSON value."""
    try:
        return _jcs(value).encode("utf-8")
    except UnicodeEncodeError:
        raise CredentialError("a string holds a lone surrogate (not valid Unicode)") from None


# --- the facts a credential is built from ---------------------------------------------------

@dataclass(frozen=True)
class LessonResult:
    lesson: str  # "02"
    title: str  # "the forward pass"
    points: int
    max_points: int
    file: str  # the notebook's file name, no folder
    sha256: str  # hex

    @property
    def score(self) -> float:
        return self.points / self.max_points if self.max_points else 0.0


@dataclass(frozen=True)
class Facts:
    name: str
    valid_from: str  # "2026-12-03T13:40:00Z"
    credential_id: str  # "urn:uuid:..."
    issuer_id: str  # did:key of the signing key, or SELF_ISSUED
    issuer_name: str
    course_version: str
    grader_version: int
    pass_mark: float
    seed: int
    required: tuple[str, ...]
    lessons: tuple[LessonResult, ...] = field(default_factory=tuple)

    @property
    def signed(self) -> bool:
        return self.issuer_id != SELF_ISSUED


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_credential_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def notebook_uri(sha256_hex: str) -> str:
    """RFC 6920 named-information URI of a file's SHA-256: 'ni:///sha-256;<base64url>'."""
    digest = base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).rstrip(b"=").decode()
    return f"ni:///sha-256;{digest}"


def sha256_from_uri(uri: str) -> str:
    prefix = "ni:///sha-256;"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        raise CredentialError(f"evidence id {uri!r} is not a ni:///sha-256 URI")
    body = uri[len(prefix):]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).hex()


def _required_value(max_points: int, pass_mark: float) -> int:
    """The fewest points that pass: ceil(pass_mark * max_points), robust to 0.8 * 10 = 8.000001."""
    return math.ceil(pass_mark * max_points - 1e-9)


def _lesson_id(lesson: str) -> str:
    return f"urn:bncourse:lesson:{lesson}"


def build_credential(facts: Facts) -> dict:
    """The unsigned OpenBadgeCredential for `facts` (the same facts give the same JSON)."""
    lessons = sorted(facts.lessons, key=lambda r: r.lesson)
    achievement = {
        "id": f"urn:bncourse:achievement:completion:{facts.course_version}",
        "type": ["Achievement"],
        "achievementType": "Certificate",
        "name": f"{COURSE}: certificate of completion",
        "description": (f"Completed the {len(facts.required)} graded lessons of the course "
                        f"'{COURSE}' (bncourse {facts.course_version})."),
        "criteria": {"narrative": (
            f"Each required lesson's exercise notebook scored at least {facts.pass_mark:.0%} of "
            "its points, graded by the course's grader: the learner's code ran in a separate, "
            "limited process and was checked on seeded inputs against the course's reference.")},
        "version": facts.course_version,
        "resultDescription": [
            {"id": _lesson_id(r.lesson), "type": ["ResultDescription"],
             "name": f"Lesson {r.lesson}: {r.title}", "resultType": "RawScore",
             "valueMin": "0", "valueMax": str(r.max_points),
             "requiredValue": str(_required_value(r.max_points, facts.pass_mark))}
            for r in lessons],
    }
    subject = {
        "type": ["AchievementSubject"],
        "identifier": [{"type": "IdentityObject", "identityType": "name", "hashed": False,
                        "identityHash": facts.name}],
        "achievement": achievement,
        "result": [{"type": ["Result"], "resultDescription": _lesson_id(r.lesson),
                    "value": str(r.points), "status": "Completed"} for r in lessons],
    }
    grading = {
        "courseVersion": facts.course_version, "graderVersion": facts.grader_version,
        "passMark": facts.pass_mark, "seed": facts.seed, "requiredLessons": list(facts.required),
        "lessons": [{"lesson": r.lesson, "title": r.title, "points": r.points,
                     "maxPoints": r.max_points, "file": r.file, "sha256": r.sha256}
                    for r in lessons],
    }
    return {
        "@context": [VC_CONTEXT, OB_CONTEXT, COURSE_CONTEXT],
        "id": facts.credential_id,
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "issuer": {"id": facts.issuer_id, "type": ["Profile"], "name": facts.issuer_name},
        "validFrom": facts.valid_from,
        "name": f"{COURSE}: certificate of completion",
        "credentialSubject": subject,
        "evidence": [{"id": notebook_uri(r.sha256), "type": ["Evidence"], "name": r.file,
                      "description": f"the graded exercise notebook of lesson {r.lesson}",
                      "genre": "graded exercise notebook"} for r in lessons],
        "grading": grading,
    }


def _get(obj, *path, kind=None):
    """obj[path...] with a CredentialError naming the path when missing or of the wrong type."""
    where = "credential"
    for key in path:
        where += f"[{key!r}]" if isinstance(key, str) else f"[{key}]"
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            raise CredentialError(f"{where} is missing") from None
    if kind is not None and (not isinstance(obj, kind) or (kind is int and isinstance(obj, bool))):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CredentialError(f"{where} should be a {names}, not {type(obj).__name__}")
    return obj


def facts_from_credential(credential) -> Facts:
    """The facts a credential states; CredentialError (naming the field) if one is missing."""
    if not isinstance(credential, dict):
        raise CredentialError("the record is not a JSON object")
    grading = _get(credential, "grading", kind=dict)
    names = [i.get("identityHash") for i in _get(credential, "credentialSubject", "identifier",
                                                  kind=list) if isinstance(i, dict)]
    if len(names) != 1 or not isinstance(names[0], str):
        raise CredentialError("credential['credentialSubject']['identifier'] should hold one name")
    lessons = []
    for index, entry in enumerate(_get(grading, "lessons", kind=list)):
        def get(key, kind, index=index):
            return _get(credential, "grading", "lessons", index, key, kind=kind)

        lessons.append(LessonResult(get("lesson", str), get("title", str), get("points", int),
                                    get("maxPoints", int), get("file", str), get("sha256", str)))
    for index, r in enumerate(lessons):
        if not re.fullmatch(r"[0-9a-f]{64}", r.sha256):
            raise CredentialError(f"credential['grading']['lessons'][{index}]['sha256'] is not "
                                  "64 lowercase hex digits")
    required = _get(credential, "grading", "requiredLessons", kind=list)
    if not all(isinstance(m, str) for m in required):
        raise CredentialError("credential['grading']['requiredLessons'] should list strings")
    return Facts(
        name=names[0], valid_from=_get(credential, "validFrom", kind=str),
        credential_id=_get(credential, "id", kind=str),
        issuer_id=_get(credential, "issuer", "id", kind=str),
        issuer_name=_get(credential, "issuer", "name", kind=str),
        course_version=_get(credential, "grading", "courseVersion", kind=str),
        grader_version=_get(credential, "grading", "graderVersion", kind=int),
        pass_mark=_get(credential, "grading", "passMark", kind=(int, float)),
        seed=_get(credential, "grading", "seed", kind=int), required=tuple(required),
        lessons=tuple(lessons))


def first_difference(a, b, where="credential") -> str | None:
    """Where two JSON values first differ ("credential['issuer']['name']"), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}[{key!r}]" + (" is not a field the course writes" if key in a
                                              else " is missing")
            found = first_difference(a[key], b[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} has {len(a)} entries, expected {len(b)}"
        for index, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{index}]")
            if found:
                return found
        return None
    same = type(a) is type(b) and a == b
    return None if same else f"{where} is {a!r}, expected {b!r}"


# --- the proof (Data Integrity, eddsa-jcs-2022) ---------------------------------------------

def _proof_options(issuer_did: str, created: str) -> dict:
    return {"type": "DataIntegrityProof", "cryptosuite": CRYPTOSUITE, "created": created,
            "verificationMethod": f"{issuer_did}#{issuer_did[len('did:key:'):]}",
            "proofPurpose": "assertionMethod"}


def _hash_data(unsecured: dict, options: dict) -> bytes:
    config = dict(options, **{"@context": unsecured["@context"]})
    return (hashlib.sha256(canonical(config)).digest()
            + hashlib.sha256(canonical(unsecured)).digest())


def sign_credential(credential: dict, key: Ed25519PrivateKey) -> dict:
    """`credential` (issuer id = the key's did:key) with an embedded eddsa-jcs-2022 proof."""
    did = did_key(key.public_key())
    if credential["issuer"]["id"] != did:
        raise ValueError("the credential's issuer id must be the signing key's did:key")
    unsecured = {k: v for k, v in credential.items() if k != "proof"}
    options = _proof_options(did, credential["validFrom"])
    signature = key.sign(_hash_data(unsecured, options))
    return dict(unsecured, proof=dict(options, proofValue="z" + base58btc(signature)))


def check_proof(credential: dict, public_key: Ed25519PublicKey | None) -> tuple[list[str], str]:
    """(failures, the did:key that signed) for the credential's proof. With `public_key`, the
    proof must be by that key; without, only its own consistency is checked."""
    proof = credential.get("proof")
    issuer = credential.get("issuer", {}).get("id") if isinstance(credential.get("issuer"),
                                                                    dict) else None
    if proof is None:
        return ["the record has no proof: it is unsigned (self-issued)"], ""
    if not isinstance(proof, dict):
        return ["the proof is not a JSON object"], ""
    if not isinstance(issuer, str) or not issuer.startswith("did:key:"):
        return [f"the issuer id {issuer!r} is not a did:key, yet the record has a proof"], ""
    expected = _proof_options(issuer, credential.get("validFrom"))
    for key in sorted(set(proof) | set(expected) | {"proofValue"}):
        if key == "proofValue":
            if not isinstance(proof.get(key), str) or not proof[key].startswith("z"):
                return ["the proof's proofValue is missing or not base58btc ('z...')"], issuer
        elif proof.get(key) != expected.get(key):
            return [f"the proof's {key} is {proof.get(key)!r}, expected {expected.get(key)!r}"], \
                issuer
    try:
        signer = public_key_from_did(issuer)
        signature = from_base58btc(proof["proofValue"][1:])
    except ValueError as exc:
        return [f"the proof cannot be read: {exc}"], issuer
    failures = []
    if public_key is not None and did_key(public_key) != issuer:
        failures.append(f"signed by another issuer: the record's key is {issuer}, the "
                        f"--public-key given is {did_key(public_key)}")
    unsecured = {k: v for k, v in credential.items() if k != "proof"}
    try:
        signer.verify(signature, _hash_data(unsecured, expected))
    except (InvalidSignature, CredentialError):
        failures.append("the signature does not match the credential: a field was edited "
                        "after signing, or the proof comes from another credential")
    return failures, issuer
