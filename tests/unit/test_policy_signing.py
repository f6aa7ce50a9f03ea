"""Ed25519 policy signatures: a round trip, and every way a signature or a key can be wrong."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from agent.errors import PolicyError
from agent.policy.signing import generate_keypair, key_id, sign, verify, write_private_key

BODY = b'version = 1\norganisation = "Acme"\n'


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return generate_keypair()


def refusal(body: bytes, signature: bytes, public_keys: list[str]) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        verify(body, signature, public_keys)
    return caught.value


def test_round_trip_names_the_signing_key(keys: tuple[bytes, str]) -> None:
    pem, public = keys
    assert public.startswith("ed25519:") and len(base64.b64decode(public[8:])) == 32
    signature = sign(BODY, pem)
    kid = key_id(base64.b64decode(public[8:]))
    assert len(kid) == 16 and signature.decode().startswith(kid + ":")
    _, other_public = generate_keypair()
    assert verify(BODY, signature, [other_public, public]) == kid
    # A bare base64 signature (no key id) verifies too.
    assert verify(BODY, signature.split(b":")[1], [public]) == kid


def test_one_byte_changed_in_the_body_or_the_signature_is_refused(keys: tuple[bytes, str]) -> None:
    pem, public = keys
    signature = sign(BODY, pem)
    for i in range(len(BODY)):
        changed = bytearray(BODY)
        changed[i] ^= 0x01
        assert refusal(bytes(changed), signature, [public]).code == "bad_signature"
    kid, encoded = signature.strip().split(b":")
    raw = bytearray(base64.b64decode(encoded))
    for i in (0, 31, 63):
        flipped = bytearray(raw)
        flipped[i] ^= 0x80
        forged = kid + b":" + base64.b64encode(bytes(flipped))
        assert refusal(BODY, forged, [public]).code == "bad_signature"


def test_another_keys_signature_is_refused_as_unknown(keys: tuple[bytes, str]) -> None:
    _, public = keys
    other_pem, _ = generate_keypair()
    error = refusal(BODY, sign(BODY, other_pem), [public])
    assert error.code == "unknown_key" and "signed by an unknown key" in error.message


@pytest.mark.parametrize(
    ("signature", "code"),
    [(b"", "unsigned"), (b"  \n", "unsigned"), (b"not base64!", "bad_signature"), (b"\xff\xfe", "bad_signature"),
     (base64.b64encode(b"x" * 10), "bad_signature"), (b"A" * 5000, "bad_signature")],
)  # fmt: skip
def test_malformed_signatures_are_refused(keys: tuple[bytes, str], signature: bytes, code: str) -> None:
    assert refusal(BODY, signature, [keys[1]]).code == code


@pytest.mark.parametrize(
    "public",
    ["", "ed25519:", "rsa:AAAA", "ed25519:not-base64!", "ed25519:" + base64.b64encode(b"short").decode(),
     "ed25519:" + base64.b64encode(b"\x00" * 33).decode()],
)  # fmt: skip
def test_malformed_public_keys_in_config_are_named(keys: tuple[bytes, str], public: str) -> None:
    error = refusal(BODY, sign(BODY, keys[0]), [keys[1], public])
    assert error.code == "bad_public_key" and "entry 2" in error.message
    assert public[8:] == "" or public[8:] not in error.message


def test_no_configured_keys_cannot_verify(keys: tuple[bytes, str]) -> None:
    assert refusal(BODY, sign(BODY, keys[0]), []).code == "no_keys"


def test_only_an_ed25519_pem_signs() -> None:
    with pytest.raises(PolicyError, match="PEM"):
        sign(BODY, b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    ec = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(PolicyError, match="not an Ed25519 key"):
        sign(BODY, ec)


def test_private_key_file_is_owner_only_and_never_overwritten(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    path = tmp_path / "keys" / "policy_signing_key.pem"
    write_private_key(path, keys[0])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == keys[0]
    with pytest.raises(PolicyError, match="refusing to overwrite"):
        write_private_key(path, generate_keypair()[0])
    assert path.read_bytes() == keys[0]
