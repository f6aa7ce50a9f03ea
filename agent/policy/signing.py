"""Ed25519 signatures for policy files.

- A public key travels as text: ``ed25519:`` + base64 of its 32 raw bytes; admins paste it into
  every agent's ``share.public_keys``. Its id is the first 16 hex digits of SHA-256 of the raw
  bytes.
- A private key is a PKCS#8 PEM file, written readable by its owner only (0600).
- A ``.sig`` file is one line of text: ``<key id>:<base64 of the 64-byte signature>``. The key id
  only names the signer in error messages ("signed by an unknown key"); what decides is the
  signature, checked against every configured key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import PolicyError

PUBLIC_KEY_PREFIX = "ed25519:"
MAX_SIGNATURE_BYTES = 4096


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(public_key: Ed25519PublicKey) -> str:
    return PUBLIC_KEY_PREFIX + base64.b64encode(_raw(public_key)).decode("ascii")


def generate_keypair() -> tuple[bytes, str]:
    """A new key: (private key PEM, public key text to paste into agent configs)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, public_key_text(private.public_key())


def write_private_key(path: Path, pem: bytes) -> None:
    """Create the key file 0600; an existing file is never overwritten (a lost key is for good)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PolicyError(f"{path} exists; refusing to overwrite a signing key", code="key_exists") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PolicyError(f"not a readable, unencrypted PEM private key: {e}", code="bad_private_key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyError("the private key is not an Ed25519 key", code="bad_private_key")
    return key


def parse_public_key(text: str) -> Ed25519PublicKey:
    """``ed25519:<base64>`` -> key; PolicyError naming what is wrong (never echoing the key)."""
    text = text.strip()
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise PolicyError(f"a public key must start with {PUBLIC_KEY_PREFIX!r}", code="bad_public_key")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("a public key is not valid base64", code="bad_public_key") from None
    if len(raw) != 32:
        raise PolicyError(f"a public key must be 32 bytes, got {len(raw)}", code="bad_public_key")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise PolicyError(f"not an Ed25519 public key: {e}", code="bad_public_key") from None


def sign(data: bytes, private_key_pem: bytes) -> bytes:
    """The content of a .sig file for ``data``."""
    private = load_private_key(private_key_pem)
    signature = base64.b64encode(private.sign(data)).decode("ascii")
    return f"{key_id(_raw(private.public_key()))}:{signature}\n".encode("ascii")


def verify(data: bytes, signature: bytes, public_keys: Sequence[str]) -> str:
    """The id of the configured key that signed ``data``; else PolicyError saying why not."""
    if not public_keys:
        raise PolicyError("no public keys configured (share.public_keys): cannot verify policies", code="no_keys")
    keys: dict[str, Ed25519PublicKey] = {}
    for n, text in enumerate(public_keys, start=1):
        try:
            key = parse_public_key(text)
        except PolicyError as e:
            raise PolicyError(f"share.public_keys entry {n} is malformed: {e.message}", code="bad_public_key") from None
        keys[key_id(_raw(key))] = key
    claimed, raw_signature = _parse_signature(signature)
    for kid, key in keys.items():
        try:
            key.verify(raw_signature, data)
        except InvalidSignature:
            continue
        return kid
    if claimed and claimed not in keys:
        raise PolicyError(f"signed by an unknown key (id {claimed})", code="unknown_key")
    raise PolicyError(
        "bad signature: the policy does not match its .sig (changed or half-written)", code="bad_signature"
    )


def _parse_signature(signature: bytes) -> tuple[str, bytes]:
    if not signature.strip():
        raise PolicyError("unsigned: the .sig is empty", code="unsigned")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise PolicyError("bad signature: the .sig is not a signature (too large)", code="bad_signature")
    try:
        text = signature.decode("ascii").strip()
    except UnicodeDecodeError:
        raise PolicyError("bad signature: the .sig is not text", code="bad_signature") from None
    claimed, _, encoded = text.rpartition(":")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("bad signature: the .sig is not base64", code="bad_signature") from None
    if len(raw) != 64:
        raise PolicyError(f"bad signature: expected 64 bytes, got {len(raw)}", code="bad_signature")
    return claimed, raw
