"""The JSON-LD contexts a credential names are bundled, byte for byte the published ones, and
every property of an issued credential survives JSON-LD processing with them, offline."""
from __future__ import annotations

import copy
import hashlib
from importlib import resources

import pytest
from pyld import jsonld

from bncourse.grading.certificate import (build_credential, check_record, did_key, make_facts,
                                          sign_credential)
from bncourse.grading.certificate.contexts import (BUNDLED, context_terms, document_loader,
                                                   load_context, undefined_terms)
from bncourse.grading.certificate.credential import OB_CONTEXT, VC_CONTEXT

from test_grading_certificate import fake_report, keys  # noqa: F401  (fixture)

# The digest the VC 2.0 Recommendation publishes for its base context (section B.1).
VC2_PUBLISHED_SHA256 = "59955ced6697d61e03f2b2556febe5308ab16842846f5b586d7f1f7adec92734"
OPTIONS = {"documentLoader": document_loader}


@pytest.fixture
def credential(keys, tmp_path):  # noqa: F811
    private, public, _, _ = keys[0]
    facts = make_facts("Ada Lovelace", fake_report(tmp_path), did_key(public), "Prof. Turing")
    return sign_credential(build_credential(facts), private)


@pytest.fixture
def unsigned(tmp_path):
    return build_credential(make_facts("Ada Lovelace", fake_report(tmp_path)))


def test_both_urls_a_credential_names_are_bundled_with_the_published_digest():
    assert set(BUNDLED) == {VC_CONTEXT, OB_CONTEXT}
    assert BUNDLED[VC_CONTEXT][1] == VC2_PUBLISHED_SHA256
    for url, (filename, digest) in BUNDLED.items():
        data = (resources.files("bncourse.grading.certificate") / "contexts" / filename)
        assert hashlib.sha256(data.read_bytes()).hexdigest() == digest, url
        assert "@context" in load_context(url)


def test_the_loader_fetches_nothing_and_names_the_url():
    with pytest.raises(ValueError, match=r"no bundled JSON-LD context for "
                                         r"'https://example.org/ctx'.*nothing is fetched"):
        document_loader("https://example.org/ctx")
    with pytest.raises(TypeError, match="url must be a str"):
        load_context(None)
    loaded = document_loader(VC_CONTEXT)
    assert loaded["documentUrl"] == VC_CONTEXT and loaded["document"] == load_context(VC_CONTEXT)


def test_load_context_returns_a_fresh_copy():
    first = load_context(OB_CONTEXT)
    first["@context"].clear()
    assert load_context(OB_CONTEXT)["@context"]


def _compact_form(value):
    """Single-element lists as their element (compaction's choice), and OB 3.0's alias
    AchievementCredential as OpenBadgeCredential (the context maps both to one IRI)."""
    if isinstance(value, list):
        value = [_compact_form(v) for v in value]
        return value[0] if len(value) == 1 else value
    if isinstance(value, dict):
        return {k: _compact_form(v) for k, v in value.items()}
    return "OpenBadgeCredential" if value == "AchievementCredential" else value


@pytest.mark.parametrize("which", ["credential", "unsigned"])
def test_every_property_survives_expansion_offline(which, request):
    record = request.getfixturevalue(which)
    expanded = jsonld.expand(record, OPTIONS)
    back = jsonld.compact(expanded, {"@context": record["@context"]}, OPTIONS)
    assert _compact_form(back) == _compact_form(record)
    assert undefined_terms(record) == []


def test_key_terms_expand_to_the_vc_and_open_badges_vocabularies(credential):
    [node] = jsonld.expand(credential, OPTIONS)
    assert "https://www.w3.org/2018/credentials#validFrom" in node
    assert "https://www.w3.org/2018/credentials#issuer" in node
    assert "https://w3id.org/security#proof" in node
    [subject] = node["https://www.w3.org/2018/credentials#credentialSubject"]
    assert "https://purl.imsglobal.org/spec/vc/ob/vocab.html#achievement" in subject
    assert "urn:bncourse:vocab#grading" in node
    assert node["urn:bncourse:vocab#grading"][0]["@type"] == "@json"  # a literal


def test_an_undefined_term_is_named_and_would_be_dropped(unsigned):
    record = copy.deepcopy(unsigned)
    record["credentialSubject"]["grade"] = "A+"
    assert undefined_terms(record) == ["credential['credentialSubject']['grade']"]
    expanded = jsonld.expand(record, OPTIONS)
    back = jsonld.compact(expanded, {"@context": record["@context"]}, OPTIONS)
    assert "grade" not in back["credentialSubject"]  # what a JSON-LD processor would show
    failures, _ = check_record(record)
    assert any("'grade'" in f and "no context defines" in f for f in failures), failures


def test_keys_inside_the_json_literal_are_not_terms(unsigned):
    record = copy.deepcopy(unsigned)
    record["grading"]["anything"] = 1
    assert undefined_terms(record) == []


def test_a_record_naming_another_context_is_refused(unsigned):
    record = copy.deepcopy(unsigned)
    record["@context"] = record["@context"] + ["https://example.org/ctx"]
    with pytest.raises(ValueError, match="no bundled JSON-LD context"):
        undefined_terms(record)
    failures, _ = check_record(record)
    assert any("example.org" in f for f in failures), failures


def test_context_terms_include_scoped_definitions():
    terms = context_terms([VC_CONTEXT, OB_CONTEXT])
    assert {"validFrom", "credentialSubject", "proof", "achievement", "identityHash",
            "resultDescription", "narrative"} <= terms
