"""The signature schemes of COMPUTE DIGITAL SIGNATURE (80 2A), by P1 (docs/card-interface.md §5.1).

All through ``cryptography``; P1 00 and 01 sign the given bytes with PKCS#1 v1.5 type-1 padding
and no DigestInfo added (``NoDigestInfo``).
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed

_PKCS1 = padding.PKCS1v15()
_NO_DIGEST_INFO = NoDigestInfo()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_SHA256 = hashes.SHA256()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)

# P1 -> (smallest, largest) data length accepted.
DATA_LENGTHS: dict[int, tuple[int, int]] = {
    0x00: (1, 245),  # 2048-bit modulus: 256 - 11 bytes of padding
    0x01: (1, 255),
    0x02: (32, 32),
    0x03: (1, 255),
    0x04: (32, 32),
    0x05: (1, 255),
}


def sign(key: rsa.RSAPrivateKey, scheme: int, data: bytes) -> bytes:
    """Sign ``data`` by scheme ``scheme`` (P1 00..05); the caller has checked the length."""
    if scheme == 0x00:
        return key.sign(data, _PKCS1, _NO_DIGEST_INFO)
    if scheme == 0x01:
        return key.sign(hashlib.sha256(data).digest(), _PKCS1, _NO_DIGEST_INFO)
    if scheme == 0x02:
        return key.sign(data, _PKCS1, _PREHASHED_SHA256)
    if scheme == 0x03:
        return key.sign(data, _PKCS1, _SHA256)
    if scheme == 0x04:
        return key.sign(data, _PSS, _PREHASHED_SHA256)
    if scheme == 0x05:
        return key.sign(data, _PSS, _SHA256)
    raise ValueError(f"unknown signature scheme {scheme:#04x}")


def internal_authenticate(key: rsa.RSAPrivateKey, challenge: bytes) -> bytes:
    """INTERNAL AUTHENTICATE: sha256WithRSA (PKCS#1 v1.5) over the challenge, deterministic."""
    return key.sign(challenge, _PKCS1, _SHA256)
