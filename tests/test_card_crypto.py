"""COMPUTE DIGITAL SIGNATURE for every P1 scheme and P2 form, INTERNAL AUTHENTICATE (§5)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed

from mynaemu import Card
from mynaemu.apdu import build_command

from .conftest import select_ap, select_ef, tx, verify

SHA256_PREFIX = bytes.fromhex("3031300D060960864801650304020105000420")
MESSAGE = b"mynaemu signs this"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)


def cert_key(card: Card, content_id: str):
    der = card.dir.content[content_id]
    return x509.load_der_x509_certificate(der[: 4 + int.from_bytes(der[2:4], "big")]).public_key()


def check(public_key, scheme: int, data: bytes, sig: bytes) -> None:
    """Verify a signature the way a relying party would for each scheme; raises if invalid."""
    if scheme == 0:
        public_key.verify(sig, data, padding.PKCS1v15(), NoDigestInfo())
    elif scheme == 1:
        public_key.verify(sig, hashlib.sha256(data).digest(), padding.PKCS1v15(), NoDigestInfo())
    elif scheme == 2:
        public_key.verify(sig, data, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    elif scheme == 3:
        public_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    elif scheme == 4:
        public_key.verify(sig, data, PSS, Prehashed(hashes.SHA256()))
    else:
        public_key.verify(sig, data, PSS, hashes.SHA256())


def data_for(scheme: int) -> bytes:
    if scheme == 0:
        return SHA256_PREFIX + hashlib.sha256(MESSAGE).digest()
    if scheme in (2, 4):
        return hashlib.sha256(MESSAGE).digest()
    return MESSAGE


@pytest.mark.parametrize("scheme", range(6))
@pytest.mark.parametrize(("key", "pin_ef", "pin", "key_ef", "cert"),
                         [("auth", "0018", "1234", "0017", "jpki.auth_cert"),
                          ("sign", "001B", "ABC123", "001A", "jpki.sign_cert")])
@pytest.mark.parametrize("p2_form", ["current", "sfi"])
def test_jpki_signatures_verify_with_certificate(
    card: Card, scheme: int, key: str, pin_ef: str, pin: str, key_ef: str, cert: str, p2_form: str
) -> None:
    select_ap(card, "jpki")
    select_ef(card, pin_ef)
    assert verify(card, pin) == b"\x90\x00"
    if p2_form == "current":
        select_ef(card, key_ef)
        p2 = 0x80
    else:
        p2 = 0x80 | int(key_ef, 16)
    data = data_for(scheme)
    resp = card.transmit(build_command(0x80, 0x2A, scheme, p2, data, 256))
    assert resp[-2:] == b"\x90\x00" and len(resp) == 258
    check(cert_key(card, cert), scheme, data, resp[:-2])


def test_sign_trace_of_real_card(card: Card) -> None:
    """§10.0: 80 2A 00 80 33 <51-byte SHA-256 DigestInfo> 00."""
    select_ap(card, "jpki")
    select_ef(card, "0018")
    verify(card, "1234")
    select_ef(card, "0017")
    digest_info = data_for(0)
    resp = tx(card, "802A008033" + digest_info.hex() + "00")
    check(cert_key(card, "jpki.auth_cert"), 0, digest_info, resp[:-2])


@pytest.mark.parametrize(
    ("apdu", "status"),
    [
        ("802A0697" + "03010203" + "00", "6A86"),   # P1 > 05
        ("802A0297" + "03010203" + "00", "6700"),   # scheme 02 needs exactly 32 bytes
        ("802A0497" + "03010203" + "00", "6700"),
        ("802A0097" + "F6" + "00" * 246 + "00", "6700"),   # scheme 00: at most 245 bytes
        ("802A0080" + "03010203" + "00", "6986"),   # no current EF
        ("802A0098" + "03010203" + "00", "6A88"),   # 0018 is a PIN, not a key
        ("802A0090" + "03010203" + "00", "6A88"),
        ("802A0000" + "03010203" + "00", "6A88"),   # JPKI has no default key
    ],
)
def test_signature_errors(card: Card, apdu: str, status: str) -> None:
    select_ap(card, "jpki")
    select_ef(card, "0018")
    verify(card, "1234")
    if apdu.startswith("802A0080"):
        select_ap(card, "jpki")
    assert tx(card, apdu).hex().upper() == status


def test_signing_without_pin_is_6982(card: Card) -> None:
    select_ap(card, "jpki")
    assert tx(card, "802A0097" + "03010203" + "00") == b"\x69\x82"
    assert tx(card, "802A009A" + "03010203" + "00") == b"\x69\x82"
    # The auth PIN does not open the signing key.
    select_ef(card, "0018")
    verify(card, "1234")
    assert tx(card, "802A009A" + "03010203" + "00") == b"\x69\x82"


@pytest.mark.parametrize(("ap", "ef_with_key", "tag"), [("text", "text.signed_public_key", 0xDF51),
                                                         ("visual", "visual.age_record", 0xDF12)])
def test_kenmen_aps_sign_challenges_without_credential(card: Card, ap: str, ef_with_key: str, tag: int) -> None:
    """The presence check (§5.3): sign a challenge with the AP key, verify with the key in the signed record."""
    from mynaemu import tlv
    from mynaemu.pki import decode_rsa_public_key

    select_ap(card, ap)
    challenge = tx(card, "0084000010")[:-2]
    data = SHA256_PREFIX + hashlib.sha256(challenge).digest()
    resp = card.transmit(build_command(0x80, 0x2A, 0x00, 0x00, data, 256))
    assert resp[-2:] == b"\x90\x00"
    record = card.dir.content[ef_with_key]
    key = tlv.find(tlv.children(record, tlv.parse_tlv(record)), tag)
    decode_rsa_public_key(key.value).verify(resp[:-2], data, padding.PKCS1v15(), NoDigestInfo())
    # JSAPDU randr: 80 2A 05 00 with 32 bytes on the text AP.
    resp = card.transmit(build_command(0x80, 0x2A, 0x05, 0x00, bytes(32), 256))
    assert resp[-2:] == b"\x90\x00" and len(resp) == 258


def test_internal_authenticate_on_common_ap(card: Card) -> None:
    select_ap(card, "common")
    challenge = bytes(range(16))
    r1 = card.transmit(build_command(0x00, 0x88, 0x00, 0x99, challenge, 256))
    r2 = card.transmit(build_command(0x00, 0x88, 0x00, 0x99, challenge, 256))
    assert r1[-2:] == b"\x90\x00" and len(r1) == 258 and r1 == r2  # deterministic
    assert card.transmit(build_command(0x00, 0x88, 0x00, 0x9C, challenge, 256)) == b"\x6a\x88"
    assert card.transmit(build_command(0x00, 0x88, 0x01, 0x99, challenge, 256)) == b"\x6a\x86"
    select_ap(card, "text")
    assert card.transmit(build_command(0x00, 0x88, 0x00, 0x93, challenge, 256)) == b"\x69\x85"
    select_ap(card, "jpki")
    assert card.transmit(build_command(0x00, 0x88, 0x00, 0x97, challenge, 256)) == b"\x69\x82"
