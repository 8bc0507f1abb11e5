"""Suspending a lost card: certificates revoked on the emulated CAs' CRLs, the card unchanged."""

from __future__ import annotations

from cryptography import x509

from mynaemu import Card
from mynaemu.cli import main
from mynaemu.pki import Authority, default_authority_dir

from .conftest import select_ap, select_ef, tx


def cert(card: Card, cid: str) -> x509.Certificate:
    der = card.dir.content[cid]
    return x509.load_der_x509_certificate(der[: 4 + int.from_bytes(der[2:4], "big")])


def test_suspend_revokes_both_certificates_and_card_still_answers(card_dir, capsys) -> None:
    before = Card.load(card_dir, read_only=True)
    assert main(["admin", str(card_dir), "suspend"]) == 0
    out = capsys.readouterr().out
    assert "auth CRL" in out and "sign CRL" in out
    authority = Authority.load(default_authority_dir())
    for which, cid, ca in (("auth", "jpki.auth_cert", authority.auth_ca_certificate),
                           ("sign", "jpki.sign_cert", authority.sign_ca_certificate)):
        crl = x509.load_der_x509_crl((default_authority_dir() / f"{which}-ca.crl").read_bytes())
        assert crl.is_signature_valid(ca.public_key())
        assert crl.issuer == ca.subject
        assert crl.get_revoked_certificate_by_serial_number(cert(before, cid).serial_number) is not None
    card = Card.load(card_dir, read_only=True)
    assert card.dir.meta["suspended"]
    select_ap(card, "jpki")
    select_ef(card, "000A")
    assert tx(card, "00B0000004") == before.dir.content["jpki.auth_cert"][:4] + b"\x90\x00"
    assert main(["info", str(card_dir)]) == 0
    assert "SUSPENDED" in capsys.readouterr().out


def test_suspend_twice_lists_each_certificate_once(card_dir) -> None:
    assert main(["admin", str(card_dir), "suspend"]) == 0
    assert main(["admin", str(card_dir), "suspend"]) == 0
    crl = x509.load_der_x509_crl((default_authority_dir() / "auth-ca.crl").read_bytes())
    serial = cert(Card.load(card_dir, read_only=True), "jpki.auth_cert").serial_number
    assert sum(1 for r in crl if r.serial_number == serial) == 1
