"""The emulated authority without HTTP: lifecycle, status database, CRLs, OCSP bytes, expiry, info, verifier.

Every test has its own status database (``private_authority``); the CAs are the session's, so
the session card's certificates chain to them.
"""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID

from mynaemu import Card
from mynaemu.authority import lifecycle
from mynaemu.authority.ca import Authority
from mynaemu.authority.crl import build_crl
from mynaemu.authority.database import database
from mynaemu.authority.ocsp import OcspResponder
from mynaemu.authority.verify import verify_signature
from mynaemu.cli import main

from .authority_kit import card_certificate, card_signature

MESSAGE = b"mynaemu authority test message\n"
T0 = datetime(2027, 1, 15, 3, 0, 0, tzinfo=UTC)


@pytest.fixture
def authority(private_authority: Path) -> Authority:
    return Authority.load(private_authority)


def ocsp_ask(responder: OcspResponder, which: str, cert: x509.Certificate, ca: x509.Certificate, *,
             nonce: bytes | None = None) -> ocsp.OCSPResponse:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return ocsp.load_der_ocsp_response(responder.respond(which, builder.build().public_bytes(serialization.Encoding.DER)))


# -- certificates point at the service ------------------------------------------------------------
def test_new_certificates_carry_cdp_and_aia_of_the_configured_base_url(card_dir: Path, authority: Authority) -> None:
    cert = card_certificate(card_dir, "sign")
    cdp = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    assert [n.value for n in cdp[0].full_name] == ["http://127.0.0.1:8480/crl/sign.crl"]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method._name, a.access_location.value) for a in aia] == [
        ("OCSP", "http://127.0.0.1:8480/ocsp/sign"), ("caIssuers", "http://127.0.0.1:8480/ca/sign.crt")]
    assert main(["authority", "config", "--base-url", "http://127.0.0.1:9999/jpki"]) == 0
    conf = authority.directory / "service.json"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    from mynaemu.persona import Persona
    from mynaemu.pki import generate_rsa_key

    fresh = authority.auth_certificate(Persona.generate(), generate_rsa_key().public_key())
    cdp = fresh.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    assert cdp[0].full_name[0].value == "http://127.0.0.1:9999/jpki/crl/auth.crl"
    assert database(authority.directory).snapshot().is_issued("auth", fresh.serial_number)


def test_authority_config_refuses_a_bad_url(private_authority: Path, capsys) -> None:
    assert main(["authority", "config", "--base-url", "ftp://x/"]) == 2
    assert "give http://HOST[:PORT]/" in capsys.readouterr().err


# -- the lifecycle ---------------------------------------------------------------------------------
def test_hold_lift_revoke_are_durable_and_on_the_crl(card_dir: Path, authority: Authority) -> None:
    auth = card_certificate(card_dir, "auth")
    changes = lifecycle.hold(card_dir, at=T0)
    assert [(c.which, c.action, c.state, c.reason) for c in changes] == [
        ("auth", "hold", "hold", "certificateHold"), ("sign", "hold", "hold", "certificateHold")]
    db_path = authority.directory / "revocations.json"
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(authority.directory.stat().st_mode) == 0o700
    doc = json.loads(db_path.read_text())
    assert doc["generation"] == 1
    assert doc["entries"][f"auth:{auth.serial_number}"] == {
        "ca": "auth", "serial": str(auth.serial_number), "state": "hold", "reason": "certificateHold",
        "time": "2027-01-15T03:00:00+00:00", "card_id": Card.load(card_dir, read_only=True).dir.card_id,
        "superseded_by": None}
    crl = x509.load_der_x509_crl((authority.directory / "auth-ca.crl").read_bytes())
    assert crl.is_signature_valid(authority.auth_ca_certificate.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(auth.serial_number)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.certificate_hold
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert lifecycle.hold(card_dir)[0].action == "unchanged"  # idempotent, nothing written
    assert json.loads(db_path.read_text())["generation"] == 1

    assert [c.state for c in lifecycle.lift(card_dir, at=T0 + timedelta(hours=1))] == ["good", "good"]
    crl = x509.load_der_x509_crl((authority.directory / "auth-ca.crl").read_bytes())
    assert len(crl) == 0 and crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    with pytest.raises(lifecycle.LifecycleError, match="is not on hold; nothing to lift"):
        lifecycle.lift(card_dir)

    lifecycle.revoke(card_dir, "affiliationChanged", which=["sign"], at=T0 + timedelta(hours=2))
    crl = x509.load_der_x509_crl((authority.directory / "sign-ca.crl").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(card_certificate(card_dir, "sign").serial_number)
    assert entry.revocation_date_utc == T0 + timedelta(hours=2)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.affiliation_changed
    with pytest.raises(lifecycle.LifecycleError, match=r"is revoked \(affiliationChanged\); it cannot be held"):
        lifecycle.hold(card_dir)  # all or nothing: the auth certificate was not held either
    assert database(authority.directory).snapshot().revocation("auth", auth.serial_number) is None
    with pytest.raises(lifecycle.LifecycleError, match="a revocation is final"):
        lifecycle.lift(card_dir, which=["sign"])
    log = json.loads(db_path.read_text())["log"]
    assert [(e["action"], e["ca"]) for e in log] == [("hold", "auth"), ("hold", "sign"), ("lift", "auth"),
                                                   ("lift", "sign"), ("revoke", "sign")]


def test_lifecycle_cli_and_info_show_status_and_expiry(card_dir: Path, private_authority: Path, capsys) -> None:
    assert main(["admin", str(card_dir), "hold", "--cert", "auth"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("auth certificate ") and out.rstrip().endswith(": hold (certificateHold)")
    assert main(["info", str(card_dir)]) == 0
    out = capsys.readouterr().out
    assert "Certificates:" in out
    auth_line = next(line for line in out.splitlines() if line.strip().startswith("auth "))
    assert "HOLD (certificateHold since" in auth_line
    assert next(line for line in out.splitlines() if line.strip().startswith("sign ")).strip().endswith("GOOD")
    # Expiry: the certificates' own validity, seen through --at (no clock is changed).
    expired_at = lifecycle.expire(card_dir)
    assert main(["info", str(card_dir), "--json", "--at", expired_at.isoformat()]) == 0
    certs = json.loads(capsys.readouterr().out)["certificates"]
    assert certs["sign"]["status"] == "expired"
    assert certs["auth"]["status"] == "hold"  # a hold stays what it is after expiry
    before = (expired_at - timedelta(seconds=2)).isoformat()
    assert main(["info", str(card_dir), "--json", "--at", before]) == 0
    assert json.loads(capsys.readouterr().out)["certificates"]["sign"]["status"] == "good"
    assert main(["admin", str(card_dir), "revoke", "--reason", "certificateHold"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["admin", str(card_dir), "lift", "--cert", "sign"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_suspend_is_revoke_as_key_compromise(card_dir: Path, authority: Authority, capsys) -> None:
    assert main(["admin", str(card_dir), "suspend"]) == 0
    snapshot = database(authority.directory).snapshot()
    for which in ("auth", "sign"):
        entry = snapshot.revocation(which, card_certificate(card_dir, which).serial_number)
        assert (entry.state, entry.reason) == ("revoked", "keyCompromise")
    capsys.readouterr()
    assert main(["info", str(card_dir)]) == 0
    assert "REVOKED (keyCompromise since" in capsys.readouterr().out


def test_reissue_supersedes_and_keeps_the_holder(card_dir: Path, authority: Authority, tmp_path: Path, capsys) -> None:
    old = Card.load(card_dir, read_only=True)
    new_dir = tmp_path / "new-card"
    assert main(["admin", str(card_dir), "reissue", str(new_dir)]) == 0
    out = capsys.readouterr().out
    assert f"a new card in {new_dir}" in out and "superseded" in out
    new = Card.load(new_dir, read_only=True)
    assert new.dir.meta["persona"]["my_number"] == old.dir.meta["persona"]["my_number"]
    assert new.dir.meta["persona"]["address"] == old.dir.meta["persona"]["address"]
    assert new.dir.meta["persona"]["card_serial"] != old.dir.meta["persona"]["card_serial"]
    assert new.keyring["sign"].value == old.keyring["sign"].value
    snapshot = database(authority.directory).snapshot()
    for which in ("auth", "sign"):
        entry = snapshot.revocation(which, card_certificate(card_dir, which).serial_number)
        assert (entry.reason, entry.superseded_by) == ("superseded", new.dir.card_id)
        assert snapshot.revocation(which, card_certificate(new_dir, which).serial_number) is None
        assert snapshot.is_issued(which, card_certificate(new_dir, which).serial_number)
    with pytest.raises(lifecycle.LifecycleError, match="already revoked"):
        lifecycle.reissue(card_dir, tmp_path / "again")
    other = lifecycle.reissue(new_dir, tmp_path / "third", new_my_number=True)
    assert other.issued.persona.my_number != new.dir.meta["persona"]["my_number"]


def test_a_card_of_another_authority_is_refused(card_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    Authority.load_or_create(tmp_path / "other" / "authority")
    monkeypatch.setenv("MYNAEMU_DATA_DIR", str(tmp_path / "other"))
    assert main(["admin", str(card_dir), "hold"]) == 2
    assert "was not issued by the authority in" in capsys.readouterr().err


# -- OCSP without HTTP ---------------------------------------------------------------------------
def test_ocsp_good_hold_unknown_nonce_and_unauthorized(card_dir: Path, authority: Authority) -> None:
    responder = OcspResponder(authority, clock=lambda: T0)
    cert, ca = card_certificate(card_dir, "auth"), authority.auth_ca_certificate
    answer = ocsp_ask(responder, "auth", cert, ca, nonce=b"n" * 16)
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    assert answer.this_update_utc == T0 and answer.next_update_utc == T0 + timedelta(hours=1)
    responder_cert = answer.certificates[0]
    assert x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in responder_cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    responder_cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    responder_cert.verify_directly_issued_by(ca)

    lifecycle.hold(card_dir, at=T0 - timedelta(minutes=5))
    answer = ocsp_ask(responder, "auth", cert, ca)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.certificate_hold
    assert answer.revocation_time_utc == T0 - timedelta(minutes=5)
    with pytest.raises(x509.ExtensionNotFound):
        answer.extensions.get_extension_for_class(x509.OCSPNonce)

    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        answer.issuer_name_hash, answer.issuer_key_hash, 4242, hashes.SHA1()).build()
    unknown = ocsp.load_der_ocsp_response(responder.respond("auth", request.public_bytes(serialization.Encoding.DER)))
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    wrong_ca = ocsp_ask(responder, "sign", cert, ca)
    assert wrong_ca.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    for garbage in (b"", b"\x30\x03\x02\x01\x01", b"not der at all"):
        bad = ocsp.load_der_ocsp_response(responder.respond("auth", garbage))
        assert bad.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_signed_by_the_ca_itself(card_dir: Path, authority: Authority) -> None:
    from mynaemu.authority.config import ServiceConfig

    responder = OcspResponder(authority, config=ServiceConfig(ocsp_signer="ca"), clock=lambda: T0)
    answer = ocsp_ask(responder, "sign", card_certificate(card_dir, "sign"), authority.sign_ca_certificate)
    assert answer.certificates == [] and answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    authority.sign_ca_certificate.public_key().verify(
        answer.signature, answer.tbs_response_bytes, __import__("cryptography.hazmat.primitives.asymmetric.padding",
                                                                fromlist=["PKCS1v15"]).PKCS1v15(), hashes.SHA256())


def test_crl_number_grows_and_entries_follow_the_database(card_dir: Path, authority: Authority) -> None:
    db = database(authority.directory)
    assert len(build_crl(authority, "sign", db.snapshot(), at=T0)) == 0
    lifecycle.revoke(card_dir, "unspecified", which=["sign"], at=T0)
    crl = build_crl(authority, "sign", db.snapshot(), at=T0)
    (entry,) = list(crl)
    assert len(entry.extensions) == 0  # unspecified: no reason code (RFC 5280 §5.3.1)
    assert crl.next_update_utc == T0 + timedelta(days=1)


# -- the verifier ----------------------------------------------------------------------------------
def test_verify_card_signature_through_time_and_status(card_dir: Path, authority: Authority, tmp_path: Path) -> None:
    signature = card_signature(card_dir, MESSAGE)
    cert = card_certificate(card_dir, "sign")
    crl_path = authority.directory / "sign-ca.crl"
    at = cert.not_valid_before_utc + timedelta(days=1)
    verdict = verify_signature(signature, MESSAGE, cert, status="none", at=at)
    assert verdict.valid, verdict.line()
    assert verdict.line().startswith("VALID: PKCS#1 v1.5 sha256 signature by ")
    assert not verify_signature(signature, MESSAGE + b"x", cert, status="none").valid
    assert "does not match the data" in verify_signature(signature, MESSAGE + b"x", cert, status="none").reason
    expired = verify_signature(signature, MESSAGE, cert, status="none", at=lifecycle.expire(card_dir))
    assert not expired.valid and "the certificate expired at" in expired.reason
    early = verify_signature(signature, MESSAGE, cert, status="none", at=cert.not_valid_before_utc - timedelta(seconds=1))
    assert "not yet valid" in early.reason
    wrong_cert = verify_signature(signature, MESSAGE, card_certificate(card_dir, "auth"), status="none")
    assert "not made with this certificate's key" in wrong_cert.reason

    lifecycle.revoke(card_dir, "keyCompromise", which=["sign"], at=at + timedelta(days=10))
    on_crl = verify_signature(signature, MESSAGE, cert, status="crl", crl=str(crl_path), at=at + timedelta(days=11))
    assert not on_crl.valid
    assert on_crl.reason.startswith("the certificate is revoked (keyCompromise) since ")
    before = verify_signature(signature, MESSAGE, cert, status="crl", crl=str(crl_path), at=at)
    assert before.valid and "good at that time, revoked (keyCompromise) from" in before.reason


def test_verify_cms_detached_and_attached(card_dir: Path, authority: Authority, tmp_path: Path) -> None:
    card = Card.load(card_dir, read_only=True)
    key, cert = card.dir.keys["jpki.sign"], card_certificate(card_dir, "sign")
    opts = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    builder = pkcs7.PKCS7SignatureBuilder().set_data(MESSAGE).add_signer(cert, key, hashes.SHA256())
    detached = builder.sign(serialization.Encoding.DER, opts)
    verdict = verify_signature(detached, MESSAGE, None, status="none")  # the signer comes from the CMS
    assert verdict.valid and verdict.reason.startswith("CMS, PKCS#1 v1.5 sha256 signature by"), verdict.line()
    assert "message digest does not match" in verify_signature(detached, MESSAGE + b"!", None, status="none").reason
    attached = builder.sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary])
    assert verify_signature(attached, None, None, status="none").valid


def test_verify_cli_exit_codes(card_dir: Path, private_authority: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "message").write_bytes(MESSAGE)
    (tmp_path / "sig").write_bytes(card_signature(card_dir, MESSAGE))
    base = ["verify", "--signature", str(tmp_path / "sig"), "--data", str(tmp_path / "message"), "--card", str(card_dir)]
    assert main([*base, "--no-status"]) == 0
    assert capsys.readouterr().out.startswith("VALID: ")
    crl = str(private_authority / "sign-ca.crl")
    lifecycle.hold(card_dir)
    assert main([*base, "--crl", crl]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID: the certificate is on hold (certificateHold) since ") and out.count("\n") == 1
    # No responder at the AIA's URL: refused with the reason, fail closed (port 9 on loopback: discard).
    assert main([*base, "--ocsp", "http://127.0.0.1:9/ocsp/sign", "--timeout", "2"]) == 1
    assert "status unavailable: cannot reach http://127.0.0.1:9/ocsp/sign" in capsys.readouterr().out
    assert main([*base[:-2], "--no-status"]) == 2  # no certificate
    assert main(["verify", "--signature", str(tmp_path / "none"), "--data", str(tmp_path / "message")]) == 2
    assert main([*base, "--at", "yesterday"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(e.startswith("mynaemu verify: error: ") for e in errors)


def test_a_failing_disk_changes_nothing(card_dir: Path, authority: Authority, monkeypatch, capsys) -> None:
    import errno
    import os

    real = os.write

    def write(fd: int, data) -> int:
        if fd > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert main(["admin", str(card_dir), "hold"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be written (No space left on device); nothing was changed" in err
    monkeypatch.setattr(os, "write", real)
    assert not (authority.directory / "revocations.json").exists()
    assert not [p for p in authority.directory.iterdir() if p.name.endswith(".tmp")]
    assert database(authority.directory).snapshot().revocations == {}


def test_the_chip_imports_nothing_of_the_authority_service() -> None:
    import subprocess
    import sys

    code = ("import sys, mynaemu.card, mynaemu.aps, mynaemu.issuance; "
            "print(sorted(m for m in sys.modules if m.startswith(('starlette', 'uvicorn', 'mynaemu.authority.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['mynaemu.authority.ca']"


def test_scenario_controls_use_the_authority_at_the_card_clock(card_dir: Path, authority: Authority, capsys) -> None:
    from mynaemu.controls import CardControls

    assert main(["ctl", str(card_dir), "clock-offset", "+1d"]) == 0
    assert main(["ctl", str(card_dir), "hold"]) == 0
    card = Card.load(card_dir)
    try:
        entry = database(authority.directory).snapshot().revocation("sign", card_certificate(card_dir, "sign").serial_number)
        assert entry.state == "hold" and entry.time > datetime.now(UTC) + timedelta(hours=23)  # the card's time
        answer = CardControls(card).handle({"op": "lift"})
        assert answer["ok"] and answer["lift"]["status"] == "good"
        assert set(answer["lift"]["serials"]) == {"auth", "sign"}
        refused = CardControls(card).handle({"op": "lift"})
        assert refused["ok"] is False and refused["kind"] == "refused" and "nothing to lift" in refused["error"]
        revoked = CardControls(card).handle({"op": "revoke"})
        assert revoked["ok"] and revoked["revoke"]["reason"] == "keyCompromise" and revoked["revoke"]["suspended"]
    finally:
        card.close()
    auth_serial = card_certificate(card_dir, "auth").serial_number
    assert database(authority.directory).snapshot().revocation("auth", auth_serial).state == "revoked"


def test_info_judges_expiry_at_the_card_clock(card_dir: Path, private_authority: Path, capsys) -> None:
    from mynaemu.controls import CardControls

    card = Card.load(card_dir)
    try:
        CardControls(card).expire_certificates()
    finally:
        card.close()
    capsys.readouterr()
    assert main(["info", str(card_dir), "--json"]) == 0
    certs = json.loads(capsys.readouterr().out)["certificates"]
    assert certs["auth"]["status"] == certs["sign"]["status"] == "expired"
