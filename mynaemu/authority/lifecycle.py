"""Suspending a card (spec Part A.11): its JPKI certificates go onto the emulated CAs' CRLs.

A suspended card still answers every APDU exactly as before, as a real lost card does; what
changes is what relying parties see: the auth and sign certificates are listed as revoked in
``auth-ca.crl`` and ``sign-ca.crl`` (DER, signed by the emulated CAs) in the authority directory.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ..card import Card
from ..state import StateError, atomic_write, read_json
from .ca import Authority

REVOKED_FORMAT = "mynaemu-revoked"
CRL_FILES = {"auth": "auth-ca.crl", "sign": "sign-ca.crl"}
CERT_CONTENT = {"auth": "jpki.auth_cert", "sign": "jpki.sign_cert"}


def _load_revoked(path: Path) -> dict:
    if not path.exists():
        return {"format": REVOKED_FORMAT, "version": 1, "auth": [], "sign": []}
    return read_json(path, REVOKED_FORMAT, 1)


def _certificate(card: Card, which: str) -> x509.Certificate | None:
    der = card.dir.content.get(CERT_CONTENT[which], b"")
    if not der:
        return None  # e.g. no signing certificate for a holder under 15
    return x509.load_der_x509_certificate(der[: 4 + int.from_bytes(der[2:4], "big")])


def write_crls(authority: Authority, revoked: dict) -> dict[str, Path]:
    """Issue both CRLs from the revocation list; returns their paths."""
    assert authority.directory is not None
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    paths = {}
    for which, (key, ca) in {
        "auth": (authority.auth_ca_key, authority.auth_ca_certificate),
        "sign": (authority.sign_ca_key, authority.sign_ca_certificate),
    }.items():
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(now)
            .next_update(now + dt.timedelta(days=1))
        )
        for entry in revoked[which]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"]))
                .revocation_date(dt.datetime.fromisoformat(entry["date"]))
                .build()
            )
        crl = builder.sign(key, hashes.SHA256())
        path = Path(authority.directory) / CRL_FILES[which]
        atomic_write(path, crl.public_bytes(serialization.Encoding.DER))  # public data, but the directory is private
        paths[which] = path
    return paths


def suspend(card: Card, authority: Authority) -> dict[str, Path]:
    """Revoke the card's JPKI certificates and mark the card suspended; returns the CRL paths."""
    if authority.directory is None:
        raise StateError("the authority has no directory to keep its CRLs in")
    list_path = Path(authority.directory) / "revoked.json"
    revoked = _load_revoked(list_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    for which in ("auth", "sign"):
        cert = _certificate(card, which)
        if cert is None:
            continue
        if cert.issuer != (authority.auth_ca_certificate if which == "auth" else authority.sign_ca_certificate).subject:
            raise StateError(f"{card.dir.path}: its {which} certificate was not issued by this authority")
        if all(int(e["serial"]) != cert.serial_number for e in revoked[which]):
            revoked[which].append({"serial": str(cert.serial_number), "date": now, "card_id": card.dir.card_id})
    atomic_write(list_path, json.dumps(revoked, indent=1).encode())
    meta = dict(card.dir.meta, suspended=now)
    atomic_write(card.dir.path / "card.json", json.dumps(meta, indent=1, ensure_ascii=False, sort_keys=True).encode())
    card.dir.meta = meta
    return write_crls(authority, revoked)
