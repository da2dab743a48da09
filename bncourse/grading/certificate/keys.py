"""An instructor's Ed25519 key pair: `bncourse keygen --out DIR`, loading PEM files, did:key.

The private key signs credentials; the public key (`public_key.pem`, or the `did:key` it maps
to, which every credential names as its issuer) is what anyone needs to verify one. Ed25519
(Bernstein et al. 2012, RFC 8032) through pyca `cryptography`.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["PRIVATE_NAME", "PUBLIC_NAME", "keygen", "load_private_key", "load_public_key",
           "public_key_pem", "did_key", "public_key_from_did", "base58btc", "from_base58btc"]

PRIVATE_NAME, PUBLIC_NAME = "private_key.pem", "public_key.pem"
# Multicodec prefix of an Ed25519 public key (0xed, varint-encoded): did:key:z6Mk...
_ED25519_MULTICODEC = b"\xed\x01"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58btc(data: bytes) -> str:
    """Bitcoin base58 of `data` (leading zero bytes become '1'), without the multibase 'z'."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = _B58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def from_base58btc(text: str) -> bytes:
    """Inverse of `base58btc`; ValueError naming the first character that is not base58."""
    number = 0
    for char in text:
        index = _B58.find(char)
        if index < 0:
            raise ValueError(f"not base58btc: character {char!r}")
        number = number * 58 + index
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def keygen(out) -> tuple[Path, Path]:
    """Write `out/private_key.pem` (PKCS#8, mode 0600) and `out/public_key.pem`; never
    overwrites an existing key (ValueError). Returns the two paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise ValueError(f"--out {out}: {path.name} already exists (an existing key is "
                             "never overwritten; choose another folder)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Created with mode 0600 from the start: the key is never readable by others, even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(private_path, 0o600)  # in case the umask or the file system widened it
    public_path.write_bytes(public_key_pem(key.public_key()))
    return private_path, public_path


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path, what: str, option: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{option} {path} is empty (expected {what})")
    return data


def load_private_key(path, option: str = "--key-file") -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; ValueError naming `option` if it is not one."""
    data = _read(path, "an Ed25519 private key in PEM, from `bncourse keygen`", option)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{option} {path}: not an unencrypted PEM private key ({exc}); "
                         "make one with `bncourse keygen --out DIR`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{option} {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path, option: str = "--public-key") -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file; ValueError naming `option` if it is not one."""
    data = _read(path, "an Ed25519 public key in PEM (public_key.pem)", option)
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{option} {path} is a private key: give the public one "
                         f"({PUBLIC_NAME}); the private key never leaves the instructor")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{option} {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{option} {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def did_key(key: Ed25519PublicKey) -> str:
    """The key's `did:key` identifier (W3C CCG did:key method): 'did:key:z6Mk...'."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "did:key:z" + base58btc(_ED25519_MULTICODEC + raw)


def public_key_from_did(did: str) -> Ed25519PublicKey:
    """Inverse of `did_key`; ValueError if `did` is not an Ed25519 did:key."""
    if not isinstance(did, str) or not did.startswith("did:key:z"):
        raise ValueError(f"not an Ed25519 did:key: {did!r}")
    raw = from_base58btc(did[len("did:key:z"):].split("#")[0])
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise ValueError(f"not an Ed25519 did:key: {did!r}")
    return Ed25519PublicKey.from_public_bytes(raw[2:])
