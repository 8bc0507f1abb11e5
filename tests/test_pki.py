"""The emulated authority, X.509 and CV certificates, and the raw PKCS#1 v1.5 signer."""

from __future__ import annotations

import hashlib
import random
import stat
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from mynaemu import pki, tlv
from mynaemu.persona import Persona

SHA256_DIGEST_INFO_PREFIX = bytes.fromhex("3031300D060960864801650304020105000420")  # spec §5.1


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> pki.Authority:
    return pki.Authority.load_or_create(tmp_path_factory.mktemp("pki") / "authority")


@pytest.fixture(scope="session")
def authority_dir(authority: pki.Authority) -> Path:
    assert authority.directory is not None
    return authority.directory


@pytest.fixture(scope="session")
def key() -> rsa.RSAPrivateKey:
    return pki.generate_rsa_key()


@pytest.fixture(scope="session")
def persona() -> Persona:
    return Persona.generate(random.Random(7), issued=date(2025, 4, 1))


# -- raw PKCS#1 v1.5 ---------------------------------------------------------------------------
def test_raw_signer_matches_standard_sha256_signature(key: rsa.RSAPrivateKey) -> None:
    message = b"mynaemu"
    digest_info = SHA256_DIGEST_INFO_PREFIX + hashlib.sha256(message).digest()
    raw = pki.sign_pkcs1v15_raw(key, digest_info)
    # PKCS#1 v1.5 is deterministic: the same DigestInfo gives the standard signature, byte for byte.
    assert raw == key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    pki.verify_pkcs1v15_raw(key.public_key(), raw, digest_info)
    key.public_key().verify(raw, message, padding.PKCS1v15(), hashes.SHA256())


def test_raw_signer_pads_exactly_the_given_bytes(key: rsa.RSAPrivateKey) -> None:
    data = bytes(range(96))
    signature = pki.sign_pkcs1v15_raw(key, data)
    assert len(signature) == 256
    # Undo the RSA operation with the public key and check EMSA-PKCS1-v1_5 by hand:
    # 00 01 FF..FF 00 data, k = 256 bytes.
    numbers = key.public_key().public_numbers()
    em = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    assert em == b"\x00\x01" + b"\xff" * (256 - 3 - len(data)) + b"\x00" + data
    with pytest.raises(InvalidSignature):
        pki.verify_pkcs1v15_raw(key.public_key(), signature, data[:-1] + b"\x00")


def test_raw_signer_length_limit(key: rsa.RSAPrivateKey) -> None:
    assert len(pki.sign_pkcs1v15_raw(key, b"\x01" * 245)) == 256  # k - 11
    with pytest.raises(ValueError, match="at most 245 bytes"):
        pki.sign_pkcs1v15_raw(key, b"\x01" * 246)


def test_digest_info_of_any_length() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert pki.digest_info_sha256(digest) == SHA256_DIGEST_INFO_PREFIX + digest
    # 96 bytes: SEQUENCE 0x71 { AlgorithmIdentifier (15 bytes), OCTET STRING 0x60 }.
    long = pki.digest_info_sha256(bytes(96))
    assert long[:2] == b"\x30\x71" and long[17:19] == b"\x04\x60" and len(long) == 115


# -- card encodings ----------------------------------------------------------------------------
def test_public_key_encoding(key: rsa.RSAPrivateKey) -> None:
    encoded = pki.encode_rsa_public_key(key.public_key())
    assert len(encoded) == 265
    assert encoded[:9] == bytes.fromhex("900301000191820100")
    assert pki.decode_rsa_public_key(encoded).public_numbers() == key.public_key().public_numbers()


def test_key_id_layout() -> None:
    assert pki.TEXT_CV_ISSUER_KEY_ID == b"9000033\x08\x05001\x00\x00\x00\x00"
    assert len({pki.ISSUER_ID, pki.CV_ROOT_KEY_ID, pki.CV_INTERMEDIATE_KEY_ID}) == 3
    with pytest.raises(ValueError):
        pki.key_id("900003")


def test_cv_certificate(key: rsa.RSAPrivateKey, authority: pki.Authority) -> None:
    subject = pki.key_id("9131013")
    cert = authority.text_cv_certificate(subject, key.public_key())
    assert len(cert) == pki.CV_CERT_LEN == 568
    assert cert[:10] == bytes.fromhex("7F218202335F4E820129")
    assert cert[307:312] == bytes.fromhex("5F37820100")
    parsed = pki.parse_cv_certificate(cert + b"\xff" * 8)  # EF filler is ignored
    assert parsed.issuer_key_id == pki.TEXT_CV_ISSUER_KEY_ID
    assert parsed.subject_key_id == subject
    assert parsed.body == cert[10:307] and len(parsed.body) == 297
    assert parsed.public_key.public_numbers() == key.public_key().public_numbers()
    parsed.verify(authority.text_cv_issuer_public_key)
    with pytest.raises(InvalidSignature):
        parsed.verify(authority.visual_cv_issuer_public_key)
    # GET DATA answers the template's contents on real cards; both forms parse.
    assert pki.parse_cv_certificate(cert[5:]).body == parsed.body
    tampered = bytearray(cert)
    tampered[100] ^= 1
    with pytest.raises(InvalidSignature):
        pki.parse_cv_certificate(bytes(tampered)).verify(authority.text_cv_issuer_public_key)


def test_cv_chain_of_the_mf(key: rsa.RSAPrivateKey, authority: pki.Authority) -> None:
    upper = pki.parse_cv_certificate(authority.cv_root_to_intermediate())
    assert (upper.issuer_key_id, upper.subject_key_id) == (pki.CV_ROOT_KEY_ID, pki.CV_INTERMEDIATE_KEY_ID)
    upper.verify(authority.cv_root_public_key)
    lower = pki.parse_cv_certificate(authority.cv_intermediate_certificate(pki.key_id("9131011"), key.public_key()))
    assert lower.issuer_key_id == upper.subject_key_id
    lower.verify(upper.public_key)  # the key certified above verifies the one below
    assert set(authority.cv_issuer_public_keys()) == {
        pki.CV_ROOT_KEY_ID,
        pki.CV_INTERMEDIATE_KEY_ID,
        pki.TEXT_CV_ISSUER_KEY_ID,
        pki.VISUAL_CV_ISSUER_KEY_ID,
    }


# -- X.509 ---------------------------------------------------------------------------------------
def test_ca_certificates_say_they_are_emulations(authority: pki.Authority) -> None:
    for cert, public_key in (
        (authority.auth_ca_certificate, authority.auth_ca_public_key),
        (authority.sign_ca_certificate, authority.sign_ca_public_key),
    ):
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        assert "EMULATED" in cn and org == "mynaemu emulation"
        assert cert.issuer == cert.subject
        cert.verify_directly_issued_by(cert)
        assert cert.public_key().public_numbers() == public_key.public_numbers()
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "User Authentication" in authority.auth_ca_certificate.subject.rfc4514_string()
    assert "Digital Signature" in authority.sign_ca_certificate.subject.rfc4514_string()


def test_auth_certificate_carries_no_personal_data(authority: pki.Authority, key: rsa.RSAPrivateKey, persona: Persona) -> None:
    cert = authority.auth_certificate(persona, key.public_key(), serial=12345)
    cert.verify_directly_issued_by(authority.auth_ca_certificate)
    assert cert.serial_number == 12345
    assert {attr.oid for attr in cert.subject} == {NameOID.COUNTRY_NAME, NameOID.COMMON_NAME}
    assert {ext.oid for ext in cert.extensions} == {
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,  # where to ask about it (docs/authority.md)
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.content_commitment and not usage.key_cert_sign
    der = cert.public_bytes(serialization.Encoding.DER)
    for value in (
        persona.family_name,
        persona.given_name,
        persona.address,
        persona.my_number,
        persona.birth.strftime("%Y%m%d"),
        persona.card_serial,
    ):
        assert value.encode() not in der
    # Valid from the issue date to the end of the 5th birthday after it, Japan time.
    assert cert.not_valid_before_utc == datetime(2025, 3, 31, 15, 0, tzinfo=UTC)
    expiry = persona.cert_expiry
    assert cert.not_valid_after_utc == datetime(expiry.year, expiry.month, expiry.day, 14, 59, 59, tzinfo=UTC)


def _other_names(cert: x509.Certificate) -> dict[str, str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    out = {}
    for name in san.get_values_for_type(x509.OtherName):
        value = tlv.parse_tlv(name.value)
        assert value.tag == 0x0C  # UTF8String
        out[name.type_id.dotted_string] = value.value.decode("utf-8")
    return out


def test_sign_certificate_attributes(authority: pki.Authority, key: rsa.RSAPrivateKey, persona: Persona) -> None:
    cert = authority.sign_certificate(persona, key.public_key())
    cert.verify_directly_issued_by(authority.sign_ca_certificate)
    values = _other_names(cert)
    arc = "1.2.392.200149.8.5.5."
    assert values[arc + "1"] == persona.name
    assert values[arc + "3"] == persona.sex
    assert pki.parse_jpki_birth_value(values[arc + "4"]) == persona.birth
    assert values[arc + "5"] == persona.address
    assert values[arc + "2"] == "0" * len(persona.name)
    assert values[arc + "6"] == "0" * len(persona.address)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment


@pytest.mark.parametrize(
    ("birth", "value"),
    [(date(1980, 2, 17), "319800217"), (date(2019, 5, 1), "520190501"), (date(1989, 1, 7), "319890107")],
)
def test_jpki_birth_value(birth: date, value: str) -> None:
    # Era digit then the Gregorian date (a test card showed 319800217 for 1980-02-17).
    assert pki.jpki_birth_value(birth) == value
    assert pki.parse_jpki_birth_value(value) == birth


def test_jpki_birth_value_refuses_a_wrong_era() -> None:
    with pytest.raises(ValueError, match="era digit"):
        pki.parse_jpki_birth_value("419800217")


# -- storage ---------------------------------------------------------------------------------
def test_authority_is_reused(authority: pki.Authority, authority_dir: Path) -> None:
    again = pki.Authority.load_or_create(authority_dir)
    der = serialization.Encoding.DER
    assert again.auth_ca_certificate.public_bytes(der) == authority.auth_ca_certificate.public_bytes(der)
    assert again.sign_ca_certificate.public_bytes(der) == authority.sign_ca_certificate.public_bytes(der)
    assert again.cv_root_to_intermediate() == authority.cv_root_to_intermediate()
    for name in ("text_cv_issuer_public_key", "visual_cv_issuer_public_key", "cv_intermediate_public_key"):
        assert getattr(again, name).public_numbers() == getattr(authority, name).public_numbers()


def test_authority_file_modes(authority: pki.Authority, authority_dir: Path) -> None:
    assert stat.S_IMODE(authority_dir.stat().st_mode) == 0o700
    names = sorted(p.name for p in authority_dir.iterdir())
    # 6 keys, 2 CA certificates, the manifest; the issuance registry once a certificate was issued.
    assert "authority.json" in names and len(set(names) - {"issued.jsonl"}) == 9
    for path in authority_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in authority_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(mode=0o700)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("filename", "corrupt", "message"),
    [
        ("jpki-sign-ca.key.pem", lambda b: b[: len(b) // 2], "not a valid unencrypted PEM private key"),
        ("cv-text-issuer.key.pem", lambda b: b"", "not a valid unencrypted PEM private key"),
        ("jpki-auth-ca.crt.pem", lambda b: b.replace(b"MII", b"MIX", 1), "not a valid PEM certificate"),
        ("authority.json", lambda b: b"{", "not a readable JSON"),
        ("authority.json", lambda b: b.replace(b'"version": 1', b'"version": 7'), "version 7"),
    ],
)
def test_corrupt_authority_is_refused_not_replaced(
    authority_dir: Path, tmp_path: Path, filename: str, corrupt, message: str
) -> None:
    root = _copy(authority_dir, tmp_path / "authority")
    target = root / filename
    target.write_bytes(corrupt(target.read_bytes()))
    broken = target.read_bytes()
    with pytest.raises(pki.AuthorityError, match=message) as info:
        pki.Authority.load_or_create(root)
    assert str(target) in str(info.value)
    assert target.read_bytes() == broken  # never silently regenerated


def test_mismatched_certificate_is_refused(authority_dir: Path, tmp_path: Path) -> None:
    root = _copy(authority_dir, tmp_path / "authority")
    (root / "jpki-auth-ca.crt.pem").write_bytes((root / "jpki-sign-ca.crt.pem").read_bytes())
    with pytest.raises(pki.AuthorityError, match="does not match its key"):
        pki.Authority.load(root)


def test_missing_file_is_refused(authority_dir: Path, tmp_path: Path) -> None:
    root = _copy(authority_dir, tmp_path / "authority")
    (root / "cv-root.key.pem").unlink()
    with pytest.raises(pki.AuthorityError, match=r"cv-root\.key\.pem: missing"):
        pki.Authority.load_or_create(root)


def test_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "authority").mkdir()
    (tmp_path / "authority" / "notes.txt").write_text("mine")
    with pytest.raises(pki.AuthorityError, match=r"authority\.json: missing"):
        pki.Authority.load_or_create(tmp_path / "authority")


def test_concurrent_creation_yields_one_authority(tmp_path: Path) -> None:
    root = tmp_path / "authority"
    start = threading.Barrier(2)
    results: list[pki.Authority] = []

    def create() -> None:
        start.wait()
        results.append(pki.Authority.load_or_create(root))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk = pki.Authority.load(root)
    der = serialization.Encoding.DER
    expected = on_disk.auth_ca_certificate.public_bytes(der)
    assert [r.auth_ca_certificate.public_bytes(der) for r in results] == [expected, expected]
    assert [p.name for p in tmp_path.iterdir()] == ["authority"]  # the loser's staging is gone


def test_save_refuses_an_existing_authority(authority: pki.Authority, authority_dir: Path) -> None:
    with pytest.raises(FileExistsError):
        authority.save(authority_dir)


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MYNAEMU_DATA_DIR", str(tmp_path / "d"))
    assert pki.default_authority_dir() == tmp_path / "d" / "authority"
    monkeypatch.delenv("MYNAEMU_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert pki.default_authority_dir() == tmp_path / "x" / "mynaemu" / "authority"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert pki.default_authority_dir() == tmp_path / "h" / ".local" / "share" / "mynaemu" / "authority"
