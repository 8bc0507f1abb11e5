"""The emulated issuers: JPKI CAs, CV-certificate issuers, and the card's signature primitives.

One `Authority` is kept per installation and reused for every card, as a real issuing authority
would be: two self-signed X.509 CAs (user authentication, digital signature) and four RSA keys
for card-verifiable (CV) certificates: a root and an intermediate (MF GET DATA F8 / 7F21) and the
issuers of the text AP and visual AP certificates (EF 0004). Every name says it is an emulation
and every CV key ID starts with 9, so no client can take an emulated card for a real one (Part
A.10).

CV certificate (docs/card-interface.md §4.6), 568 bytes:
    7F21 82 0233 { 5F4E 82 0129 <issuer key ID 16><subject key ID 16><90 e 91 n>
                   5F37 82 0100 <PKCS#1 v1.5 SHA-256 signature over the 297-byte 5F4E value> }
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo
from cryptography.x509.oid import NameOID

from .. import tlv
from ..persona import japanese_era

if TYPE_CHECKING:
    from ..persona import Persona

__all__ = [
    "CV_INTERMEDIATE_KEY_ID",
    "CV_ROOT_KEY_ID",
    "ISSUER_ID",
    "JPKI_ATTRIBUTE_OIDS",
    "TEXT_CV_ISSUER_KEY_ID",
    "VISUAL_CV_ISSUER_KEY_ID",
    "Authority",
    "AuthorityError",
    "CvCertificate",
    "build_cv_certificate",
    "decode_rsa_public_key",
    "default_authority_dir",
    "digest_info_sha256",
    "encode_rsa_public_key",
    "generate_rsa_key",
    "jpki_birth_value",
    "key_id",
    "parse_cv_certificate",
    "parse_jpki_birth_value",
    "sign_pkcs1v15_raw",
    "sign_sha256",
    "verify_pkcs1v15_raw",
    "verify_sha256",
]

JST = timezone(timedelta(hours=9), "JST")
RSA_BITS = 2048
PUBLIC_EXPONENT = 65537

_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_NO_DIGEST_INFO = NoDigestInfo()


# -- RSA primitives --------------------------------------------------------------------------
def generate_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key, e = 65537."""
    return rsa.generate_private_key(PUBLIC_EXPONENT, RSA_BITS)


def sign_pkcs1v15_raw(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 signature with EMSA type-1 padding applied to `data` exactly as given.

    `data` is normally a DER DigestInfo (COMPUTE DIGITAL SIGNATURE P1=00, or a DigestInfo whose
    OCTET STRING is not a single hash's size). `cryptography` >= 47 does this natively with
    `NoDigestInfo`: OpenSSL pads and exponentiates with blinding, no DigestInfo is added.
    """
    limit = private_key.key_size // 8 - 11
    if len(data) > limit:
        raise ValueError(f"PKCS#1 v1.5 can sign at most {limit} bytes with this key, got {len(data)}")
    return private_key.sign(data, _PKCS1, _NO_DIGEST_INFO)


def verify_pkcs1v15_raw(public_key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> None:
    """Check a `sign_pkcs1v15_raw` signature; raise InvalidSignature if it does not cover `data`."""
    public_key.verify(signature, data, _PKCS1, _NO_DIGEST_INFO)


def sign_sha256(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """sha256WithRSAEncryption (PKCS#1 v1.5) over `data`."""
    return private_key.sign(data, _PKCS1, _SHA256)


def verify_sha256(public_key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> None:
    """Check a `sign_sha256` signature; raise InvalidSignature if wrong."""
    public_key.verify(signature, data, _PKCS1, _SHA256)


def encode_rsa_public_key(public_key: rsa.RSAPublicKey) -> bytes:
    """The card's RSA public key encoding: `90 <e> 91 <n>` (265 bytes for RSA-2048)."""
    numbers = public_key.public_numbers()
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    n = numbers.n.to_bytes((public_key.key_size + 7) // 8, "big")
    return tlv.tlv(0x90, e) + tlv.tlv(0x91, n)


def decode_rsa_public_key(data: bytes) -> rsa.RSAPublicKey:
    """Inverse of `encode_rsa_public_key` (the `90`/`91` objects, in any order)."""
    fields = {item.tag: item.value for item in tlv.iter_tlvs(data)}
    try:
        e, n = fields[0x90], fields[0x91]
    except KeyError:
        raise tlv.TlvError("an RSA public key needs objects 90 (exponent) and 91 (modulus)") from None
    return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()


# -- CV certificates -------------------------------------------------------------------------
def key_id(number: str, group: str = "001", tail: bytes = bytes(4)) -> bytes:
    """A 16-byte key ID in the card's layout: 7 ASCII digits, 08 05, 3 ASCII digits, 4 bytes."""
    if len(number) != 7 or not number.isascii() or not number.isdigit():
        raise ValueError("a key ID number is 7 ASCII digits")
    if len(group) != 3 or not group.isascii() or not group.isdigit():
        raise ValueError("a key ID group is 3 ASCII digits")
    if len(tail) != 4:
        raise ValueError("a key ID ends with 4 bytes")
    return number.encode() + b"\x08\x05" + group.encode() + tail


# Production IDs start with 5, the J-LIS test hierarchy's with 6 (MCARD data.rs); 9 = emulated.
ISSUER_ID = key_id("9000000")
CV_ROOT_KEY_ID = key_id("9000001")
CV_INTERMEDIATE_KEY_ID = key_id("9000011")
VISUAL_CV_ISSUER_KEY_ID = key_id("9000023")
TEXT_CV_ISSUER_KEY_ID = key_id("9000033")

CV_BODY_LEN = 297
CV_CERT_LEN = 568


@dataclass(frozen=True)
class CvCertificate:
    """A parsed CV certificate; `body` is exactly what `signature` covers."""

    issuer_key_id: bytes
    subject_key_id: bytes
    public_key: rsa.RSAPublicKey
    body: bytes
    signature: bytes

    def verify(self, issuer_public_key: rsa.RSAPublicKey) -> None:
        """Raise InvalidSignature unless `issuer_public_key` signed this certificate."""
        verify_sha256(issuer_public_key, self.signature, self.body)


def build_cv_certificate(
    signer: rsa.RSAPrivateKey, issuer_key_id: bytes, subject_key_id: bytes, public_key: rsa.RSAPublicKey
) -> bytes:
    """A CV certificate of `public_key`, signed by `signer` (568 bytes for RSA-2048 keys)."""
    if len(issuer_key_id) != 16 or len(subject_key_id) != 16:
        raise ValueError("CV certificate key IDs are 16 bytes each")
    body = issuer_key_id + subject_key_id + encode_rsa_public_key(public_key)
    return tlv.tlv(0x7F21, tlv.tlv(0x5F4E, body) + tlv.tlv(0x5F37, sign_sha256(signer, body)))


def parse_cv_certificate(data: bytes) -> CvCertificate:
    """Parse a CV certificate, with its `7F21` template (EF 0004) or without (template contents).

    Trailing filler after the certificate is ignored.
    """
    outer = tlv.parse_tlv(data)
    items = tlv.children(data, outer) if outer.tag == 0x7F21 else list(_until_filler(data))
    body = tlv.find(items, 0x5F4E).value
    signature = tlv.find(items, 0x5F37).value
    if len(body) < 32:
        raise tlv.TlvError(f"CV certificate body of {len(body)} bytes is too short for two key IDs")
    return CvCertificate(body[:16], body[16:32], decode_rsa_public_key(body[32:]), body, signature)


def _until_filler(data: bytes) -> Iterator[tlv.Tlv]:
    """Objects up to the first filler byte (00 or FF) or the end."""
    offset = 0
    while offset < len(data) and data[offset] not in (0x00, 0xFF):
        item = tlv.parse_tlv(data, offset)
        yield item
        offset = item.end


# -- X.509 -----------------------------------------------------------------------------------
# subjectAltName otherName types of the JPKI signing certificate (docs/card-interface.md §4.3). The substitute-
# character fields (.2, .6) hold one digit per character of the name / address, 1 where a
# character outside the certificate's repertoire was substituted; emulated names need none.
JPKI_ATTRIBUTE_OIDS: dict[str, x509.ObjectIdentifier] = {
    "name": x509.ObjectIdentifier("1.2.392.200149.8.5.5.1"),
    "name_substitutes": x509.ObjectIdentifier("1.2.392.200149.8.5.5.2"),
    "sex": x509.ObjectIdentifier("1.2.392.200149.8.5.5.3"),
    "birth": x509.ObjectIdentifier("1.2.392.200149.8.5.5.4"),
    "address": x509.ObjectIdentifier("1.2.392.200149.8.5.5.5"),
    "address_substitutes": x509.ObjectIdentifier("1.2.392.200149.8.5.5.6"),
}

_CA_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=UTC)
_CA_NOT_AFTER = datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)


def _utf8_string(value: str) -> bytes:
    """DER UTF8String."""
    return tlv.tlv(0x0C, value.encode("utf-8"))


def jpki_birth_value(birth: date) -> str:
    """The JPKI birth attribute: era digit (1 明治 .. 5 令和) then the Gregorian YYYYMMDD."""
    era, _ = japanese_era(birth)
    return f"{era.jpki_code}{birth:%Y%m%d}"


def parse_jpki_birth_value(value: str) -> date:
    """Inverse of `jpki_birth_value`; ValueError if the era digit disagrees with the date."""
    if len(value) != 9 or not value.isascii() or not value.isdigit():
        raise ValueError("a JPKI birth value is 9 digits: era digit and YYYYMMDD")
    d = date(int(value[1:5]), int(value[5:7]), int(value[7:9]))
    if int(value[0]) != japanese_era(d)[0].jpki_code:
        raise ValueError(f"era digit {value[0]} does not match {d.isoformat()}")
    return d


def _ca_name(usage: str, title: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mynaemu emulation"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"JPKI for {usage} (EMULATED, not J-LIS)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mynaemu EMULATED JPKI {title} CA"),
        ]
    )


def _self_signed_ca(key: rsa.RSAPrivateKey, name: x509.Name) -> x509.Certificate:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Wide validity: cards may be issued with back-dated or far-future issue dates.
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(*, non_repudiation: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=non_repudiation,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# -- the authority ---------------------------------------------------------------------------
class AuthorityError(Exception):
    """The authority directory is unusable; the message names the file and what is wrong."""


MANIFEST = "authority.json"
FORMAT = "mynaemu-authority"
VERSION = 1
_KEY_FILES = {
    "auth_ca_key": "jpki-auth-ca.key.pem",
    "sign_ca_key": "jpki-sign-ca.key.pem",
    "cv_root_key": "cv-root.key.pem",
    "cv_intermediate_key": "cv-intermediate.key.pem",
    "text_cv_issuer_key": "cv-text-issuer.key.pem",
    "visual_cv_issuer_key": "cv-visual-issuer.key.pem",
}
_CERT_FILES = {
    "auth_ca_certificate": ("jpki-auth-ca.crt.pem", "auth_ca_key"),
    "sign_ca_certificate": ("jpki-sign-ca.crt.pem", "sign_ca_key"),
}


def default_authority_dir() -> Path:
    """$MYNAEMU_DATA_DIR/authority, else $XDG_DATA_HOME/mynaemu/authority, else ~/.local/share/..."""
    from ..private_files import data_dir

    return data_dir() / "authority"


class Authority:
    """The emulated JPKI CAs and CV-certificate issuers of one installation."""

    def __init__(
        self,
        *,
        auth_ca_key: rsa.RSAPrivateKey,
        auth_ca_certificate: x509.Certificate,
        sign_ca_key: rsa.RSAPrivateKey,
        sign_ca_certificate: x509.Certificate,
        cv_root_key: rsa.RSAPrivateKey,
        cv_intermediate_key: rsa.RSAPrivateKey,
        text_cv_issuer_key: rsa.RSAPrivateKey,
        visual_cv_issuer_key: rsa.RSAPrivateKey,
        directory: Path | None = None,
    ) -> None:
        self.auth_ca_key = auth_ca_key
        self.auth_ca_certificate = auth_ca_certificate
        self.sign_ca_key = sign_ca_key
        self.sign_ca_certificate = sign_ca_certificate
        self.cv_root_key = cv_root_key
        self.cv_intermediate_key = cv_intermediate_key
        self.text_cv_issuer_key = text_cv_issuer_key
        self.visual_cv_issuer_key = visual_cv_issuer_key
        self.directory = directory

    def __repr__(self) -> str:
        return f"Authority(directory={str(self.directory)!r})"

    # -- creation and storage
    @classmethod
    def generate(cls) -> Authority:
        """A new authority in memory (eight RSA-2048 keys); `save` or `load_or_create` keeps it."""
        auth_key, sign_key = generate_rsa_key(), generate_rsa_key()
        return cls(
            auth_ca_key=auth_key,
            auth_ca_certificate=_self_signed_ca(auth_key, _ca_name("user authentication", "User Authentication")),
            sign_ca_key=sign_key,
            sign_ca_certificate=_self_signed_ca(sign_key, _ca_name("digital signature", "Digital Signature")),
            cv_root_key=generate_rsa_key(),
            cv_intermediate_key=generate_rsa_key(),
            text_cv_issuer_key=generate_rsa_key(),
            visual_cv_issuer_key=generate_rsa_key(),
        )

    @classmethod
    def load_or_create(cls, directory: Path | str | None = None) -> Authority:
        """The authority kept in `directory` (default: `default_authority_dir()`), created if absent.

        Creation is atomic and safe against concurrent callers: the files are written into a
        private temporary sibling which is renamed into place; a loser of the race loads the
        winner's. An existing but broken authority raises AuthorityError and is never replaced.
        """
        root = Path(directory) if directory is not None else default_authority_dir()
        if (root / MANIFEST).exists():
            return cls.load(root, check=False)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise AuthorityError(
                f"{root / MANIFEST}: missing, and {root} is not an empty directory; "
                "refusing to create an authority over other files"
            )
        authority = cls.generate()
        try:
            authority.save(root)
        except FileExistsError:
            return cls.load(root, check=False)
        _remember(root, authority)
        return authority

    def save(self, directory: Path | str) -> None:
        """Write the authority into `directory`, which must not exist or be empty.

        Keys and certificates are written 0600 into a 0700 temporary directory, synced, and the
        directory is renamed into place. FileExistsError if another authority got there first.
        """
        root = Path(directory)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))  # mode 0700
        try:
            for attr, filename in _KEY_FILES.items():
                key: rsa.RSAPrivateKey = getattr(self, attr)
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                _write_new(staging / filename, pem)
            for attr, (filename, _) in _CERT_FILES.items():
                cert: x509.Certificate = getattr(self, attr)
                _write_new(staging / filename, cert.public_bytes(serialization.Encoding.PEM))
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": "Emulated issuers of mynaemu; not J-LIS, not valid for any real purpose.",
                "keys": _KEY_FILES,
                "certificates": {attr: f for attr, (f, _) in _CERT_FILES.items()},
            }
            # The manifest last: its presence marks a complete authority.
            _write_new(staging / MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
            _fsync_dir(staging)
            try:
                os.rename(staging, root)  # replaces an empty directory, fails on a populated one
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(f"{root}: already holds an authority") from None
                raise
            _fsync_dir(root.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.directory = root

    @classmethod
    def load(cls, directory: Path | str, *, check: bool = True) -> Authority:
        """Load an authority saved earlier; AuthorityError naming the first broken file.

        ``check=False`` (what ``load_or_create`` does) skips OpenSSL's RSA consistency check of the
        six keys (~25 ms each; the certificates are still matched to their keys) and reuses the
        authority this process loaded from the same directory before, as long as its manifest is
        the same file: issuing a card no longer re-reads the authority.
        """
        root = Path(directory)
        manifest_path = root / MANIFEST
        if not check and (cached := _cached(root)) is not None:
            return cached
        manifest = _read_manifest(manifest_path)
        keys = {attr: _load_key(root / manifest["keys"].get(attr, ""), check=check) for attr in _KEY_FILES}
        certs = {}
        for attr, (_, key_attr) in _CERT_FILES.items():
            path = root / manifest["certificates"].get(attr, "")
            cert = _load_certificate(path)
            if cert.public_key().public_numbers() != keys[key_attr].public_key().public_numbers():
                raise AuthorityError(f"{path}: certificate does not match its key {manifest['keys'][key_attr]}")
            certs[attr] = cert
        authority = cls(**keys, **certs, directory=root)
        _remember(root, authority)
        return authority

    # -- public halves, for verifiers
    @property
    def auth_ca_public_key(self) -> rsa.RSAPublicKey:
        """Public key of the user-authentication CA."""
        return self.auth_ca_key.public_key()

    @property
    def sign_ca_public_key(self) -> rsa.RSAPublicKey:
        """Public key of the digital-signature CA."""
        return self.sign_ca_key.public_key()

    @property
    def cv_root_public_key(self) -> rsa.RSAPublicKey:
        """Public key of the CV root (verifies MF GET DATA F8)."""
        return self.cv_root_key.public_key()

    @property
    def cv_intermediate_public_key(self) -> rsa.RSAPublicKey:
        """Public key of the CV intermediate (verifies MF GET DATA 7F21)."""
        return self.cv_intermediate_key.public_key()

    @property
    def text_cv_issuer_public_key(self) -> rsa.RSAPublicKey:
        """Public key of the text-AP CV issuer (verifies text EF 0004 and DF52 of EF 0007)."""
        return self.text_cv_issuer_key.public_key()

    @property
    def visual_cv_issuer_public_key(self) -> rsa.RSAPublicKey:
        """Public key of the visual-AP CV issuer (verifies visual EF 0004)."""
        return self.visual_cv_issuer_key.public_key()

    def cv_issuer_public_keys(self) -> dict[bytes, rsa.RSAPublicKey]:
        """Every CV issuer public key by its 16-byte key ID, as a verifier's key table."""
        return {
            CV_ROOT_KEY_ID: self.cv_root_public_key,
            CV_INTERMEDIATE_KEY_ID: self.cv_intermediate_public_key,
            TEXT_CV_ISSUER_KEY_ID: self.text_cv_issuer_public_key,
            VISUAL_CV_ISSUER_KEY_ID: self.visual_cv_issuer_public_key,
        }

    # -- X.509 end-entity certificates
    def auth_certificate(self, persona: Persona, public_key: rsa.RSAPublicKey, serial: int | None = None) -> x509.Certificate:
        """利用者証明用電子証明書: no personal data at all; keyUsage digitalSignature."""
        cert = self._end_entity(
            self.auth_ca_key,
            self.auth_ca_certificate,
            persona,
            public_key,
            serial,
            _key_usage(non_repudiation=False),
        ).sign(self.auth_ca_key, hashes.SHA256())
        return self._issued("auth", cert)

    def sign_certificate(self, persona: Persona, public_key: rsa.RSAPublicKey, serial: int | None = None) -> x509.Certificate:
        """署名用電子証明書: the four basic attributes in subjectAltName otherNames (docs/card-interface.md §4.3)."""
        values = {
            "name": persona.name,
            "birth": jpki_birth_value(persona.birth),
            "sex": persona.sex,
            "address": persona.address,
            "name_substitutes": "0" * len(persona.name),
            "address_substitutes": "0" * len(persona.address),
        }
        # The order a test card was seen to use: 1, 4, 3, 5, 2, 6.
        san = x509.SubjectAlternativeName(
            [x509.OtherName(JPKI_ATTRIBUTE_OIDS[field], _utf8_string(value)) for field, value in values.items()]
        )
        builder = self._end_entity(
            self.sign_ca_key,
            self.sign_ca_certificate,
            persona,
            public_key,
            serial,
            _key_usage(non_repudiation=True),
        )
        cert = builder.add_extension(san, critical=False).sign(self.sign_ca_key, hashes.SHA256())
        return self._issued("sign", cert)

    def _end_entity(
        self,
        ca_key: rsa.RSAPrivateKey,
        ca_cert: x509.Certificate,
        persona: Persona,
        public_key: rsa.RSAPublicKey,
        serial: int | None,
        key_usage: x509.KeyUsage,
    ) -> x509.CertificateBuilder:
        # The subject names nobody: a random identifier, as the real certificates carry.
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(NameOID.COMMON_NAME, os.urandom(10).hex().upper()),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(datetime.combine(persona.issued, time(0, 0, 0), JST))
            .not_valid_after(datetime.combine(persona.cert_expiry, time(23, 59, 59), JST))
            .add_extension(key_usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        # Where relying parties ask about this certificate: CRL and OCSP of the authority's service.
        for extension in _status_extensions(self.directory, "auth" if ca_cert is self.auth_ca_certificate else "sign"):
            builder = builder.add_extension(extension, critical=False)
        return builder

    def _issued(self, which: str, cert: x509.Certificate) -> x509.Certificate:
        """Record `cert` in the authority's issuance registry (OCSP answers "unknown" for others)."""
        if self.directory is not None:
            from .database import database

            database(self.directory).record_issued(which, cert)
        return cert

    # -- CV certificates
    def text_cv_certificate(self, subject_key_id: bytes, public_key: rsa.RSAPublicKey) -> bytes:
        """Text AP EF 0004: `public_key` certified by the text-AP CV issuer."""
        return build_cv_certificate(self.text_cv_issuer_key, TEXT_CV_ISSUER_KEY_ID, subject_key_id, public_key)

    def visual_cv_certificate(self, subject_key_id: bytes, public_key: rsa.RSAPublicKey) -> bytes:
        """Visual AP EF 0004: `public_key` certified by the visual-AP CV issuer."""
        return build_cv_certificate(self.visual_cv_issuer_key, VISUAL_CV_ISSUER_KEY_ID, subject_key_id, public_key)

    def cv_root_to_intermediate(self) -> bytes:
        """MF GET DATA F8: the intermediate's key certified by the root."""
        return build_cv_certificate(self.cv_root_key, CV_ROOT_KEY_ID, CV_INTERMEDIATE_KEY_ID, self.cv_intermediate_public_key)

    def cv_intermediate_certificate(self, subject_key_id: bytes, public_key: rsa.RSAPublicKey) -> bytes:
        """MF GET DATA 7F21: `public_key` certified by the intermediate."""
        return build_cv_certificate(self.cv_intermediate_key, CV_INTERMEDIATE_KEY_ID, subject_key_id, public_key)


# -- the per-process cache ---------------------------------------------------------------------
# One authority per directory and process, keyed also by the manifest's identity (device, inode,
# mtime): a directory whose authority was replaced (a rename puts a new manifest there) is read
# again. A lock, since issuance may run in several threads.
_loaded: dict[str, tuple[tuple[int, int, int], Authority]] = {}
_loaded_guard = threading.Lock()


def _manifest_identity(root: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(root / MANIFEST)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _cached(root: Path) -> Authority | None:
    identity = _manifest_identity(root)
    with _loaded_guard:
        entry = _loaded.get(str(root.absolute()))
    if identity is None or entry is None or entry[0] != identity:
        return None
    return entry[1]


def _remember(root: Path, authority: Authority) -> None:
    identity = _manifest_identity(root)
    if identity is not None:
        with _loaded_guard:
            _loaded[str(root.absolute())] = (identity, authority)


def _status_extensions(directory: Path | None, which: str) -> list[x509.ExtensionType]:
    """CRL Distribution Points and Authority Information Access (OCSP, CA certificate) of CA `which`."""
    from .config import load_config

    config = load_config(directory)
    return [
        x509.CRLDistributionPoints(
            [x509.DistributionPoint([x509.UniformResourceIdentifier(config.crl_url(which))], None, None, None)]
        ),
        x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(x509.AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(config.ocsp_url(which))),
                x509.AccessDescription(x509.AuthorityInformationAccessOID.CA_ISSUERS,
                                       x509.UniformResourceIdentifier(config.ca_url(which))),
            ]
        ),
    ]


# -- file helpers ------------------------------------------------------------------------------
def _write_new(path: Path, data: bytes) -> None:
    """Create `path` 0600 (never over an existing file) and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_manifest(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise AuthorityError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise AuthorityError(f"{path}: not a readable JSON authority manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise AuthorityError(f"{path}: not a mynaemu authority manifest (format must be {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise AuthorityError(f"{path}: authority format version {doc.get('version')!r} is not supported")
    return doc


def _load_key(path: Path, *, check: bool = True) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None, unsafe_skip_rsa_key_validation=not check)
    except FileNotFoundError:
        raise AuthorityError(f"{path}: missing") from None
    except (OSError, ValueError, TypeError) as exc:
        raise AuthorityError(f"{path}: not a valid unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != RSA_BITS:
        raise AuthorityError(f"{path}: not an RSA-{RSA_BITS} private key")
    return key


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise AuthorityError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise AuthorityError(f"{path}: not a valid PEM certificate ({exc})") from None


def digest_info_sha256(octets: bytes) -> bytes:
    """DER DigestInfo { sha256, OCTET STRING octets } for any length of `octets`.

    The visual AP's DF28 wraps three concatenated SHA-256 hashes (96 bytes) this way, which no
    hash-object API can produce; `sign_pkcs1v15_raw` then signs it.
    """
    algorithm = tlv.tlv(0x30, tlv.tlv(0x06, bytes.fromhex("608648016503040201")) + b"\x05\x00")
    return tlv.tlv(0x30, algorithm + tlv.tlv(0x04, octets))
