"""The JSON-LD contexts a credential names, bundled so that nothing is ever fetched.

A credential's ``@context`` lists the W3C Verifiable Credentials 2.0 base context, the Open
Badges 3.0.3 context and the course's own inline context (`credential.COURSE_CONTEXT`). A
JSON-LD processor (a wallet, a verifier that expands or canonicalises the record) must resolve
the two URLs; `document_loader` hands it the bundled copies, byte for byte the published
documents, checked against their SHA-256 on every load. The VC 2.0 Recommendation publishes the
digest of its context (section B.1, "Base Context"), so that copy can be checked by anyone;
the Open Badges one is pinned to the file 1EdTech publishes. Sources and licences:
`contexts/README.md`.

`undefined_terms` is the cheap check the course runs on every record it issues or verifies:
every property name must be defined by one of the contexts, else a JSON-LD processor silently
drops it (the VC 2.0 context has no ``@vocab``) and what was signed is not what a wallet shows.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources

__all__ = ["BUNDLED", "load_context", "document_loader", "context_terms", "undefined_terms"]

# url -> (file in contexts/, SHA-256 of its bytes)
BUNDLED: dict[str, tuple[str, str]] = {
    "https://www.w3.org/ns/credentials/v2": (
        "credentials-v2.jsonld",
        "59955ced6697d61e03f2b2556febe5308ab16842846f5b586d7f1f7adec92734"),
    "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json": (
        "ob-v3p0-context-3.0.3.json",
        "ef2fa9c7846dce233cc166b43639027278be4ee44f00bb1d45c75de2dd0cd761"),
}


@lru_cache(maxsize=None)
def _load(url: str) -> str:
    filename, digest = BUNDLED[url]
    data = (resources.files(__package__) / "contexts" / filename).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"the bundled copy of {url} ({filename}) does not match its published "
                         f"SHA-256 {digest}: the installation is damaged")
    return data.decode("utf-8")


def load_context(url: str) -> dict:
    """The bundled context document for `url` (a fresh dict); ValueError for any other url:
    nothing is fetched."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    if url not in BUNDLED:
        known = ", ".join(sorted(BUNDLED))
        raise ValueError(f"no bundled JSON-LD context for {url!r} (nothing is fetched); "
                         f"bundled: {known}")
    return json.loads(_load(url))


def document_loader(url: str, options=None) -> dict:
    """A JSON-LD document loader (the shape PyLD's `documentLoader` option takes) that serves
    the bundled contexts and refuses everything else, so JSON-LD processing stays offline:
    ``pyld.jsonld.expand(credential, {"documentLoader": document_loader})``."""
    return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url,
            "document": load_context(url)}


def _collect(context, terms: set) -> None:
    """Add every term a context defines, in its own definitions and any scoped context."""
    if isinstance(context, list):
        for item in context:
            _collect(item, terms)
        return
    if isinstance(context, str):
        _collect(load_context(context)["@context"], terms)
        return
    if not isinstance(context, dict):
        return
    for term, definition in context.items():
        if term.startswith("@"):
            continue
        terms.add(term)
        if isinstance(definition, dict) and "@context" in definition:
            _collect(definition["@context"], terms)


def context_terms(context) -> frozenset:
    """Every term `context` (a url, an inline dict or a list of them) defines, scoped ones
    included: a necessary condition for a JSON-LD processor to keep a property."""
    terms: set = set()
    _collect(context, terms)
    return frozenset(terms)


def undefined_terms(credential: dict) -> list[str]:
    """Property names in `credential` that none of its contexts defines, as JSON paths.

    Values of ``@json`` terms (the course's `grading`) are literals: their keys are not terms.
    ValueError if the record names a context that is not bundled."""
    context = credential.get("@context", [])
    terms = context_terms(context)
    literal = _json_literal_terms(context)
    found: list[str] = []

    def walk(node, where):
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")
        elif isinstance(node, dict):
            for key, value in node.items():
                if key.startswith("@") or key in ("id", "type") and key in terms:
                    continue
                if key not in terms and ":" not in key:
                    found.append(f"{where}[{key!r}]")
                if key not in literal:
                    walk(value, f"{where}[{key!r}]")

    walk({k: v for k, v in credential.items() if k != "@context"}, "credential")
    return found


def _json_literal_terms(context) -> frozenset:
    names = set()
    for item in context if isinstance(context, list) else [context]:
        if isinstance(item, dict):
            names.update(t for t, d in item.items() if isinstance(d, dict)
                         and d.get("@type") == "@json")
    return frozenset(names)
