"""Certificates anyone can verify: `bncourse keygen`, `bncourse certificate`, `bncourse verify`.

    keys.py        Ed25519 key pair (PEM files), did:key identifiers
    credential.py  the record: an Open Badges 3.0 OpenBadgeCredential (W3C VC 2.0) with an
                   eddsa-jcs-2022 Data Integrity proof (JCS, RFC 8785); built from its facts
    pdf.py         the PDF: layout computed from the name and the number of lessons
    issue.py       grade a folder, then (key read only now) sign and write JSON + PDF
    verify.py      check the proof, the fields and the pass rule; `--regrade` re-grades
"""
from bncourse.grading.certificate.credential import build_credential, canonical, \
    facts_from_credential, sign_credential
from bncourse.grading.certificate.issue import issue, make_facts, write_certificate
from bncourse.grading.certificate.keys import did_key, keygen, load_private_key, \
    load_public_key
from bncourse.grading.certificate.verify import UNSIGNED_WARNING, check_record, verify

__all__ = ["keygen", "load_private_key", "load_public_key", "did_key", "build_credential",
           "canonical", "facts_from_credential", "sign_credential", "issue", "make_facts",
           "write_certificate", "check_record", "verify", "UNSIGNED_WARNING"]
