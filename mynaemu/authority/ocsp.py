"""The OCSP responder of both emulated CAs (RFC 6960), bytes in, bytes out.

Each CA answers for its own certificates: ``good`` (issued by it, not on its CRL), ``revoked``
(with revocation time and reason; a hold is ``revoked`` with ``certificateHold``, as RFC 6960
§2.2 says) or ``unknown`` (a serial it never issued). A request about another issuer's
certificate is ``unauthorized``; one that does not parse (or asks about several certificates at
once, which ``cryptography`` cannot build answers for) is ``malformedRequest``. A request nonce
(id-pkix-ocsp-nonce) is echoed in the response.

Signer (``service.json``'s ``ocsp_signer``): ``delegated`` (default) signs with a responder
certificate per CA, issued by that CA with id-kp-OCSPSigning and id-pkix-ocsp-nocheck and a
P-256 key: an ECDSA signature costs a fraction of an RSA-2048 one, and that is most of what a
response costs. ``ca`` signs with the CA's own RSA key. Responder certificates live 90 days and
are renewed (under the status lock) when less than 30 are left or the CA changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..state import atomic_write
from .ca import Authority
from .config import ServiceConfig, load_config
from .crl import ca_of
from .database import StatusDatabase, database, utc_seconds

RESPONSE_LIFETIME = timedelta(hours=1)  # nextUpdate: how long a relying party may cache an answer
RESPONDER_LIFETIME = timedelta(days=90)
RESPONDER_RENEW = timedelta(days=30)
MAX_REQUEST_BYTES = 64 * 1024
_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)
CA_TITLES = {"auth": "User Authentication", "sign": "Digital Signature"}


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    """An OCSPResponse with only a status (malformedRequest, internalError, unauthorized, ...)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


def issuer_hashes(ca: x509.Certificate) -> dict[str, tuple[bytes, bytes]]:
    """(issuerNameHash, issuerKeyHash) of ``ca`` for every CertID hash algorithm we accept."""
    name = ca.subject.public_bytes()
    key = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    out = {}
    for algorithm in _HASHES:
        n, k = hashes.Hash(algorithm()), hashes.Hash(algorithm())
        n.update(name)
        k.update(key)
        out[algorithm.name] = (n.finalize(), k.finalize())
    return out


# -- delegated responder certificates ------------------------------------------------------------
def _responder_paths(directory: Path, which: str) -> tuple[Path, Path]:
    return directory / f"ocsp-{which}.key.pem", directory / f"ocsp-{which}.crt.pem"


def _responder_usable(cert: x509.Certificate, ca: x509.Certificate, at: datetime) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_before_utc <= at and at + RESPONDER_RENEW <= cert.not_valid_after_utc


def responder_certificate(
    authority: Authority, which: str, *, at: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The delegated OCSP signer of CA ``which``: loaded from the authority directory, made when missing or due."""
    assert authority.directory is not None
    directory = Path(authority.directory)
    key_path, cert_path = _responder_paths(directory, which)
    ca_key, ca = ca_of(authority, which)
    with database(directory).locked():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if (isinstance(key, ec.EllipticCurvePrivateKey) and _responder_usable(cert, ca, at)
                    and cert.public_key() == key.public_key()):
                return key, cert
        except (OSError, ValueError, TypeError):
            pass  # missing or unreadable: made anew below (it holds no state worth keeping)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mynaemu emulation"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mynaemu EMULATED JPKI {CA_TITLES[which]} OCSP Responder"),
        ])
        start = utc_seconds(at) - timedelta(hours=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + RESPONDER_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return key, cert


# -- the responder ---------------------------------------------------------------------------------
class OcspResponder:
    """Answers OCSP requests for both CAs of one authority from its status database.

    ``clock`` gives the current time (UTC); tests and the scenario controls pass their own.
    """

    def __init__(self, authority: Authority, *, config: ServiceConfig | None = None,
                 db: StatusDatabase | None = None, clock: Callable[[], datetime] | None = None) -> None:
        if authority.directory is None:
            raise ValueError("the OCSP responder needs an authority kept in a directory (its status database)")
        self.authority = authority
        self.config = config or load_config(authority.directory)
        self.db = db or database(authority.directory)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._hashes = {which: issuer_hashes(ca_of(authority, which)[1]) for which in ("auth", "sign")}
        self._signers: dict[str, tuple] = {}
        self._guard = threading.Lock()

    def signer(self, which: str, at: datetime) -> tuple:
        """(private key, certificate, responder certificates to include) that sign CA ``which``'s answers."""
        if self.config.ocsp_signer == "ca":
            key, cert = ca_of(self.authority, which)
            return key, cert, []
        with self._guard:
            made = self._signers.get(which)
            if made is None or not made[1].not_valid_before_utc <= at < made[1].not_valid_after_utc - RESPONDER_RENEW:
                key, cert = responder_certificate(self.authority, which, at=at)
                made = (key, cert, [cert])
                self._signers[which] = made
            return made

    def respond(self, which: str, request_der: bytes) -> bytes:
        """The DER OCSPResponse to ``request_der`` sent to CA ``which``'s responder."""
        if len(request_der) > MAX_REQUEST_BYTES:
            return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            algorithm = request.hash_algorithm
            name_hash, key_hash, serial = request.issuer_name_hash, request.issuer_key_hash, request.serial_number
            nonce = _nonce(request)
        except (ValueError, TypeError, x509.UnsupportedGeneralNameType, x509.DuplicateExtension):
            return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        except Exception:  # e.g. a hash algorithm cryptography does not know: still the request's fault
            return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if self._hashes[which].get(algorithm.name) != (name_hash, key_hash):
            return unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = utc_seconds(self.clock())
        snapshot = self.db.snapshot()
        entry = snapshot.revocation(which, serial)
        if entry is not None:
            status, when, reason = ocsp.OCSPCertStatus.REVOKED, entry.time, entry.reason_flag
            if reason == x509.ReasonFlags.unspecified:
                reason = None  # as on the CRL: no reason code for "unspecified"
        elif snapshot.is_issued(which, serial):
            status, when, reason = ocsp.OCSPCertStatus.GOOD, None, None
        else:
            status, when, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        key, responder, included = self.signer(which, now)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(name_hash, key_hash, serial, algorithm, status, now, now + RESPONSE_LIFETIME,
                                  when, reason)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
        )
        if included:
            builder = builder.certificates(included)
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None
