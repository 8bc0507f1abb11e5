"""The emulated CAs' CRLs (RFC 5280 v2), built from the revocation database.

Full CRLs only, no delta CRLs: every CRL lists every certificate held or revoked at that moment,
so a lifted hold (``lift``) simply is no longer on the next CRL; ``removeFromCRL`` (which exists
only for delta CRLs) is never written. Each entry carries its reason code (``certificateHold``
for a hold; none for ``unspecified``, as RFC 5280 §5.3.1 asks); the CRL number is the database's
generation, so it grows with every change. thisUpdate is when the CRL was made, nextUpdate one
day later (the service makes a fresh one on every change and at least hourly).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ..state import atomic_write
from .ca import Authority
from .database import StatusSnapshot, utc_seconds

CRL_FILES = {"auth": "auth-ca.crl", "sign": "sign-ca.crl"}
CRL_LIFETIME = timedelta(days=1)
CRL_REFRESH = timedelta(hours=1)


def ca_of(authority: Authority, which: str) -> tuple:
    """(key, certificate) of CA ``which`` ("auth" or "sign")."""
    if which == "auth":
        return authority.auth_ca_key, authority.auth_ca_certificate
    if which == "sign":
        return authority.sign_ca_key, authority.sign_ca_certificate
    raise ValueError(f"unknown CA {which!r}; the CAs are auth and sign")


def build_crl(authority: Authority, which: str, snapshot: StatusSnapshot, *, at: datetime) -> x509.CertificateRevocationList:
    """CA ``which``'s CRL of ``snapshot``, issued at ``at``."""
    key, ca = ca_of(authority, which)
    now = utc_seconds(at)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + CRL_LIFETIME)
        .add_extension(x509.CRLNumber(snapshot.generation), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    for entry in snapshot.revoked_by(which):
        revoked = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.time)
        if entry.reason != "unspecified":
            revoked = revoked.add_extension(x509.CRLReason(entry.reason_flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(key, hashes.SHA256())


def write_crl_files(authority: Authority, snapshot: StatusSnapshot, *, at: datetime) -> dict[str, Path]:
    """Both CRLs as DER files in the authority directory (``auth-ca.crl``, ``sign-ca.crl``)."""
    assert authority.directory is not None
    paths = {}
    for which, name in CRL_FILES.items():
        path = Path(authority.directory) / name
        atomic_write(path, build_crl(authority, which, snapshot, at=at).public_bytes(serialization.Encoding.DER))
        paths[which] = path
    return paths


class CrlCache:
    """The service's CRLs: rebuilt when the database changed or the last one is an hour old."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self._guard = threading.Lock()
        self._made: dict[str, tuple[int, datetime, bytes]] = {}

    def der(self, which: str, snapshot: StatusSnapshot, *, at: datetime) -> bytes:
        with self._guard:
            made = self._made.get(which)
            if made is None or made[0] != snapshot.generation or at - made[1] >= CRL_REFRESH or at < made[1]:
                crl = build_crl(self.authority, which, snapshot, at=at)
                made = (snapshot.generation, at, crl.public_bytes(serialization.Encoding.DER))
                self._made[which] = made
            return made[2]
