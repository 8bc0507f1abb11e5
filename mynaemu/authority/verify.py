"""A relying party: is this signature, made by a (emulated) My Number card, valid at a given time?

Input: the signature as the card makes it (RSASSA-PKCS1-v1_5 over a DigestInfo, e.g. from
``pkcs11-tool --sign -m SHA256-RSA-PKCS`` or ``mynaemu.signing``) or a CMS / PKCS#7 SignedData
(detached or not, with or without signed attributes), the signed data, and the signer's
certificate (or the one inside the CMS). Checks, in this order, each a reason to refuse:

1. the signature: the DigestInfo's hash is read back with the public key (``cryptography``'s
   ``recover_data_from_signature``), then the signature is verified over the data with that hash
   by ``cryptography`` (never by comparing bytes by hand);
2. the chain: the certificate is issued (signature checked) by one of the trust anchors, the
   emulated CAs of the authority directory unless others are given; keyUsage digitalSignature;
3. validity at ``at`` (default now), of the certificate and of its CA;
4. status: OCSP (the URL given, or the certificate's AIA) with a fresh nonce, the response's
   signature (the CA or a delegated id-kp-OCSPSigning responder it issued), serial and nonce
   checked; or a CRL (a file or URL given, or the certificate's CDP), its signature and freshness
   checked. A revocation (or hold) at or before ``at`` refuses; one after ``at`` does not (the
   signature was made while the certificate was good). No status source found refuses, unless
   status checking is switched off.

Everything fails closed: an unreachable responder is a refusal with its reason.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from .. import tlv
from .lifecycle import serial_text

CLOCK_SKEW = timedelta(minutes=5)
MAX_FETCH = 4 * 1024 * 1024
_PKCS1 = padding.PKCS1v15()
# DER of the hash algorithm OIDs a DigestInfo / CMS may name.
HASH_OIDS: dict[bytes, type[hashes.HashAlgorithm]] = {
    bytes.fromhex("2B0E03021A"): hashes.SHA1,
    bytes.fromhex("608648016503040204"): hashes.SHA224,
    bytes.fromhex("608648016503040201"): hashes.SHA256,
    bytes.fromhex("608648016503040202"): hashes.SHA384,
    bytes.fromhex("608648016503040203"): hashes.SHA512,
}
OID_SIGNED_DATA = bytes.fromhex("2A864886F70D010702")
OID_MESSAGE_DIGEST = bytes.fromhex("2A864886F70D010904")
# PKCS#1 v1.5 signature algorithm OIDs of a SignerInfo (rsaEncryption and shaNNNWithRSAEncryption).
PKCS1_SIGNATURE_OIDS = {bytes.fromhex("2A864886F70D0101" + n) for n in ("01", "05", "0B", "0C", "0D", "0E")}


class VerifyError(ValueError):
    """Input the verifier cannot use at all (no certificate, unreadable file): a usage error."""


@dataclass(frozen=True)
class Verdict:
    """The answer: ``valid`` and one line saying why."""

    valid: bool
    reason: str
    certificate: x509.Certificate | None = None

    def line(self) -> str:
        return f"{'VALID' if self.valid else 'INVALID'}: {self.reason}"


class _Refused(Exception):
    """One check failed; the message is the verdict's reason."""


# -- trust anchors -------------------------------------------------------------------------------
def load_trust_anchors(authority_dir: Path | str) -> dict[str, x509.Certificate]:
    """The emulated CAs' certificates by name ("auth", "sign"), read without their keys."""
    from .ca import MANIFEST, _load_certificate, _read_manifest

    root = Path(authority_dir)
    manifest = _read_manifest(root / MANIFEST)
    names = manifest.get("certificates", {})
    return {which: _load_certificate(root / names.get(f"{which}_ca_certificate", ""))
            for which in ("auth", "sign")}


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER (DER may be followed by an EF's filler)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    if data[:2] == b"\x30\x82" and len(data) >= 4:
        data = data[: 4 + int.from_bytes(data[2:4], "big")]
    return x509.load_der_x509_certificate(data)


# -- the signature -------------------------------------------------------------------------------
def _digest_info_hash(info: bytes) -> type[hashes.HashAlgorithm]:
    """The hash a DER DigestInfo names (and whose size its digest has)."""
    outer = tlv.parse_tlv(info)
    if outer.tag != 0x30 or outer.end != len(info):
        raise _Refused("the signature does not hold a DigestInfo (not a PKCS#1 v1.5 hash signature)")
    algorithm, digest = tlv.children(info, outer)
    oid = tlv.children(info, algorithm)[0]
    if oid.tag != 0x06 or oid.value not in HASH_OIDS or digest.tag != 0x04:
        raise _Refused("the signature's DigestInfo names no hash this verifier knows")
    hash_type = HASH_OIDS[oid.value]
    if len(digest.value) != hash_type.digest_size:
        raise _Refused(f"the signature's DigestInfo holds {len(digest.value)} bytes, not one {hash_type.name} hash")
    return hash_type


def _check_raw(signature: bytes, data: bytes, cert: x509.Certificate) -> str:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise _Refused("the certificate's key is not RSA")
    try:
        info = key.recover_data_from_signature(signature, _PKCS1, None)
    except (InvalidSignature, ValueError):
        raise _Refused("the signature was not made with this certificate's key") from None
    try:
        hash_type = _digest_info_hash(info)
    except tlv.TlvError:
        raise _Refused("the signature does not hold a DigestInfo (not a PKCS#1 v1.5 hash signature)") from None
    try:
        key.verify(signature, data, _PKCS1, hash_type())
    except InvalidSignature:
        raise _Refused(f"the signature does not match the data ({hash_type.name} differs)") from None
    return f"PKCS#1 v1.5 {hash_type.name}"


@dataclass(frozen=True)
class CmsSignature:
    """The one SignerInfo of a SignedData, parsed."""

    signature: bytes
    hash_type: type[hashes.HashAlgorithm]
    signed_attributes: bytes | None  # DER, re-tagged as SET OF (what the signature covers)
    message_digest: bytes | None
    issuer: bytes  # DER Name of the signer's certificate issuer (b"" for a subjectKeyIdentifier sid)
    serial: int | None
    key_identifier: bytes | None
    content: bytes | None  # encapsulated content, when not detached
    certificates: list[x509.Certificate]


def _cms_der(blob: bytes) -> bytes | None:
    """The DER of ``blob`` if it is a CMS / PKCS#7 SignedData (PEM or DER), else None."""
    text = blob.lstrip()
    if text.startswith(b"-----BEGIN"):
        import base64

        lines = [line for line in text.splitlines() if line and not line.startswith(b"-----")]
        try:
            blob = base64.b64decode(b"".join(lines), validate=True)
        except ValueError:
            return None
    try:
        outer = tlv.parse_tlv(blob)
        items = tlv.children(blob, outer)
    except (tlv.TlvError, ValueError):
        return None
    if outer.tag == 0x30 and items and items[0].tag == 0x06 and items[0].value == OID_SIGNED_DATA:
        return blob[: outer.end]
    return None


def parse_cms(der: bytes) -> CmsSignature:
    """Parse a SignedData with exactly one SignerInfo (the card signs alone)."""
    try:
        outer = tlv.parse_tlv(der)
        _, explicit = tlv.children(der, outer)[:2]
        signed_data = tlv.children(der, explicit)[0]
        parts = tlv.children(der, signed_data)
        encap = parts[2]
        encap_items = tlv.children(der, encap)
        content = None
        if len(encap_items) > 1:  # [0] EXPLICIT OCTET STRING eContent
            content = tlv.children(der, encap_items[1])[0].value
        signer_infos = parts[-1]
        infos = tlv.children(der, signer_infos)
        if signer_infos.tag != 0x31 or len(infos) != 1:
            raise _Refused("the CMS signature must hold exactly one signer")
        fields = tlv.children(der, infos[0])
        sid, digest_alg = fields[1], fields[2]
        index = 3
        signed_attributes = message_digest = None
        if fields[index].tag == 0xA0:
            attrs = fields[index]
            signed_attributes = b"\x31" + der[attrs.start + 1 : attrs.end]
            for attr in tlv.children(der, attrs):
                oid, values = tlv.children(der, attr)
                if oid.value == OID_MESSAGE_DIGEST:
                    message_digest = tlv.children(der, values)[0].value
            index += 1
        sig_alg, signature = fields[index], fields[index + 1]
        hash_oid = tlv.children(der, digest_alg)[0].value
        sig_oid = tlv.children(der, sig_alg)[0].value
    except (tlv.TlvError, ValueError, IndexError):
        raise _Refused("the CMS signature is malformed") from None
    if hash_oid not in HASH_OIDS:
        raise _Refused("the CMS signature uses a digest algorithm this verifier does not know")
    if sig_oid not in PKCS1_SIGNATURE_OIDS:
        raise _Refused("the CMS signature is not RSA PKCS#1 v1.5 (the card signs only that way)")
    issuer, serial, key_id = b"", None, None
    if sid.tag == 0x30:
        name, number = tlv.children(der, sid)
        issuer, serial = der[name.start : name.end], int.from_bytes(number.value, "big", signed=True)
    else:
        key_id = sid.value
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:
        certificates = []
    return CmsSignature(signature.value, HASH_OIDS[hash_oid], signed_attributes, message_digest, issuer, serial,
                        key_id, content, certificates)


def _cms_signer(cms: CmsSignature) -> x509.Certificate | None:
    for cert in cms.certificates:
        if cms.serial is not None and cert.serial_number == cms.serial and cert.issuer.public_bytes() == cms.issuer:
            return cert
        if cms.key_identifier is not None:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == cms.key_identifier:
                return cert
    return None


def _check_cms(cms: CmsSignature, data: bytes, cert: x509.Certificate) -> str:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise _Refused("the certificate's key is not RSA")
    digest = hashes.Hash(cms.hash_type())
    digest.update(data)
    covered = data
    if cms.signed_attributes is not None:
        if cms.message_digest != digest.finalize():
            raise _Refused(f"the CMS signature's message digest does not match the data ({cms.hash_type.name})")
        covered = cms.signed_attributes
    try:
        key.verify(cms.signature, covered, _PKCS1, cms.hash_type())
    except InvalidSignature:
        raise _Refused("the CMS signature was not made with this certificate's key over this data") from None
    return f"CMS, PKCS#1 v1.5 {cms.hash_type.name}"


# -- chain and validity --------------------------------------------------------------------------
def _issuer_of(cert: x509.Certificate, anchors: list[x509.Certificate]) -> x509.Certificate:
    for ca in anchors:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    raise _Refused(f"the certificate ({_subject(cert)}) was not issued by a trusted CA "
                   f"(trusted: {', '.join(_subject(ca) for ca in anchors) or 'none'})")


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _check_usage(cert: x509.Certificate, ca: x509.Certificate) -> None:
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _Refused(f"the CA {_subject(ca)} is not marked as a CA (basicConstraints, keyUsage keyCertSign)") from None
    if not constraints.ca or not ca_usage.key_cert_sign:
        raise _Refused(f"the CA {_subject(ca)} may not issue certificates")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise _Refused("the certificate's keyUsage does not allow digital signatures")


def _check_validity(cert: x509.Certificate, ca: x509.Certificate, at: datetime) -> None:
    for what, c in (("certificate", cert), ("CA certificate", ca)):
        if at < c.not_valid_before_utc:
            raise _Refused(f"the {what} is not yet valid at {at:%Y-%m-%d %H:%M:%S} UTC "
                           f"(valid from {c.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC)")
        if at > c.not_valid_after_utc:
            raise _Refused(f"the {what} expired at {c.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC "
                           f"(checked at {at:%Y-%m-%d %H:%M:%S} UTC)")


# -- status --------------------------------------------------------------------------------------
def _fetch(url: str, *, data: bytes | None = None, timeout: float) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise _Refused(f"status source {url}: only http(s) URLs are fetched")
    headers = {"Content-Type": "application/ocsp-request"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read(MAX_FETCH)
    except urllib.error.HTTPError as exc:
        raise _Refused(f"status unavailable: {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise _Refused(f"status unavailable: cannot reach {url} ({why})") from None


def _aia_url(cert: x509.Certificate, method: x509.ObjectIdentifier) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for item in aia:
        if item.access_method == method and isinstance(item.access_location, x509.UniformResourceIdentifier):
            return item.access_location.value
    return None


def _cdp_url(cert: x509.Certificate) -> str | None:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier):
                return name.value
    return None


def _key_bits(public_key) -> bytes:
    """The subjectPublicKey BIT STRING's content (what OCSP's key hashes cover)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _sha1(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA1())
    h.update(data)
    return h.finalize()


def _verify_with(public_key, signature: bytes, data: bytes, hash_algorithm: hashes.HashAlgorithm | None) -> None:
    if hash_algorithm is None:
        raise InvalidSignature
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, _PKCS1, hash_algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
    else:
        raise InvalidSignature


def _ocsp_signer_key(response: ocsp.OCSPResponse, ca: x509.Certificate, now: datetime):
    def names(cert: x509.Certificate) -> bool:
        if response.responder_key_hash is not None:
            return response.responder_key_hash == _sha1(_key_bits(cert.public_key()))
        return response.responder_name == cert.subject

    if names(ca):
        return ca.public_key()
    for cert in response.certificates:
        if not names(cert):
            continue
        try:
            cert.verify_directly_issued_by(ca)
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            raise _Refused("the OCSP responder's certificate is not a delegated responder of the CA") from None
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
            raise _Refused("the OCSP responder's certificate lacks id-kp-OCSPSigning")
        if not cert.not_valid_before_utc - CLOCK_SKEW <= now <= cert.not_valid_after_utc + CLOCK_SKEW:
            raise _Refused("the OCSP responder's certificate is not valid now")
        return cert.public_key()
    raise _Refused("the OCSP response is signed by neither the CA nor a responder it names")


def _revoked_at(when: datetime, reason: x509.ReasonFlags | None, at: datetime, source: str) -> str:
    from .database import REASON_NAMES

    name = REASON_NAMES.get(reason, "unspecified") if reason is not None else "unspecified"
    state = "on hold" if name == "certificateHold" else "revoked"
    if when <= at:
        raise _Refused(f"the certificate is {state} ({name}) since {when:%Y-%m-%d %H:%M:%S} UTC ({source})")
    return f"good at that time, {state} ({name}) from {when:%Y-%m-%d %H:%M:%S} UTC ({source})"


def check_ocsp(cert: x509.Certificate, ca: x509.Certificate, url: str, *, at: datetime, now: datetime,
               timeout: float = 10.0) -> str:
    """Ask ``url`` about ``cert``; the status text, or _Refused with the reason."""
    nonce = os.urandom(16)
    request = (ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
               .add_extension(x509.OCSPNonce(nonce), critical=False).build())
    raw = _fetch(url, data=request.public_bytes(serialization.Encoding.DER), timeout=timeout)
    try:
        response = ocsp.load_der_ocsp_response(raw)
    except ValueError:
        raise _Refused(f"status unavailable: {url} sent no OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _Refused(f"status unavailable: the OCSP responder {url} answered {response.response_status.name}")
    key = _ocsp_signer_key(response, ca, now)
    try:
        _verify_with(key, response.signature, response.tbs_response_bytes, response.signature_hash_algorithm)
    except (InvalidSignature, UnsupportedAlgorithm):
        raise _Refused(f"the OCSP response from {url} has a bad signature") from None
    try:
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        echoed = None
    if echoed != nonce:
        raise _Refused(f"the OCSP response from {url} does not echo our nonce (a replayed answer?)")
    if response.serial_number != cert.serial_number:
        raise _Refused(f"the OCSP response from {url} is about another certificate")
    if response.this_update_utc > now + CLOCK_SKEW or (
            response.next_update_utc is not None and response.next_update_utc < now - CLOCK_SKEW):
        raise _Refused(f"the OCSP response from {url} is not current")
    source = f"OCSP {url}"
    if response.certificate_status == ocsp.OCSPCertStatus.GOOD:
        return f"good ({source})"
    if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        return _revoked_at(response.revocation_time_utc, response.revocation_reason, at, source)
    raise _Refused(f"the certificate is unknown to the CA's OCSP responder ({source})")


def check_crl(cert: x509.Certificate, ca: x509.Certificate, source: str, *, at: datetime, now: datetime,
              timeout: float = 10.0) -> str:
    """Look ``cert`` up on the CRL at ``source`` (a file or an http(s) URL)."""
    if source.startswith(("http://", "https://")):
        raw = _fetch(source, timeout=timeout)
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            raise VerifyError(f"--crl {source}: cannot be read ({exc.strerror or exc})") from None
    try:
        crl = x509.load_pem_x509_crl(raw) if raw.lstrip().startswith(b"-----BEGIN") else x509.load_der_x509_crl(raw)
    except ValueError:
        raise _Refused(f"status unavailable: {source} is not a CRL") from None
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):
        raise _Refused(f"the CRL {source} is not signed by the certificate's CA")
    if crl.next_update_utc is not None and crl.next_update_utc < now - CLOCK_SKEW:
        raise _Refused(f"the CRL {source} is stale (nextUpdate {crl.next_update_utc:%Y-%m-%d %H:%M:%S} UTC)")
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return f"not on the CRL ({source})"
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        reason = None
    return _revoked_at(entry.revocation_date_utc, reason, at, f"CRL {source}")


# -- the verifier --------------------------------------------------------------------------------
def verify_signature(signature: bytes, data: bytes | None, certificate: x509.Certificate | None = None, *,
                     trust: list[x509.Certificate] | None = None, authority_dir: Path | str | None = None,
                     at: datetime | None = None, now: datetime | None = None, status: str = "auto",
                     ocsp_url: str | None = None, crl: str | None = None, timeout: float = 10.0) -> Verdict:
    """Verify ``signature`` over ``data`` by ``certificate``; see the module docstring.

    ``status``: "auto" (OCSP at ``ocsp_url`` or the AIA, else the CRL at ``crl`` or the CDP),
    "ocsp", "crl" or "none". ``at`` is the instant the signature must be valid at; ``now`` the
    current time for freshness checks (both default to now). VerifyError for unusable input.
    """
    now = now or datetime.now(UTC)
    at = at or now
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if status not in ("auto", "ocsp", "crl", "none"):
        raise VerifyError(f"status must be auto, ocsp, crl or none, not {status!r}")
    cms_der = _cms_der(signature)
    try:
        cms = parse_cms(cms_der) if cms_der is not None else None
    except _Refused as exc:
        return Verdict(False, str(exc), certificate)
    if cms is not None:
        certificate = certificate or _cms_signer(cms)
        if data is None:
            data = cms.content
    if certificate is None:
        raise VerifyError("no signer certificate: give one (the CMS signature carries none that matches)")
    if data is None:
        raise VerifyError("no signed data: give the data (the signature is detached)")
    if trust is None:
        if authority_dir is None:
            from .ca import default_authority_dir

            authority_dir = default_authority_dir()
        try:
            trust = list(load_trust_anchors(authority_dir).values())
        except Exception as exc:  # AuthorityError: no authority here
            raise VerifyError(f"no trust anchors: {exc}") from None
    try:
        how = _check_cms(cms, data, certificate) if cms is not None else _check_raw(signature, data, certificate)
        ca = _issuer_of(certificate, trust)
        _check_usage(certificate, ca)
        _check_validity(certificate, ca, at)
        if status == "none":
            state = "status not checked"
        else:
            url = ocsp_url or (_aia_url(certificate, x509.AuthorityInformationAccessOID.OCSP) if status != "crl" else None)
            if status in ("auto", "ocsp") and url:
                state = check_ocsp(certificate, ca, url, at=at, now=now, timeout=timeout)
            elif status == "ocsp":
                raise _Refused("no OCSP responder: the certificate names none (give its URL)")
            else:
                source = crl or _cdp_url(certificate)
                if source is None:
                    raise _Refused("no status source: the certificate names no OCSP responder or CRL "
                                   "(give an OCSP URL or a CRL, or switch status checking off)")
                state = check_crl(certificate, ca, source, at=at, now=now, timeout=timeout)
    except _Refused as exc:
        return Verdict(False, str(exc), certificate)
    reason = (f"{how} signature by {_subject(certificate)} (serial {serial_text(certificate.serial_number)}), "
              f"issued by {_subject(ca)}, valid at {at:%Y-%m-%d %H:%M:%S} UTC, {state}")
    return Verdict(True, reason, certificate)
