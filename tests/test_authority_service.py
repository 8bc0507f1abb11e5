"""Real clients against a running ``authority serve`` (uvicorn on a free loopback port).

``openssl ocsp`` and ``openssl verify -crl_check`` with the CRL fetched over HTTP agree at every
step of good -> hold -> lift -> reissue; nonces, unknown serials, malformed requests, GET, wrong
methods and media types; ``mynaemu authority serve`` as a process. No sleeps: the listening
socket exists before the server runs, and each change is visible at the next request.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mynaemu.authority import lifecycle
from mynaemu.authority.ca import Authority
from mynaemu.authority.service import loopback_socket
from mynaemu.cli import main

from .authority_kit import card_certificate, card_signature, openssl, running_authority, write_pem

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed (scripts/setup)")
MESSAGE = b"signed through the served authority\n"


def fetch(url: str, data: bytes | None = None, *, method: str | None = None,
          content_type: str = "application/ocsp-request") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


class Relying:
    """openssl as a relying party for one certificate of a card."""

    def __init__(self, base: str, which: str, card_dir: Path, authority: Authority, tmp: Path) -> None:
        self.base, self.which, self.tmp = base, which, tmp
        ca = authority.auth_ca_certificate if which == "auth" else authority.sign_ca_certificate
        self.ca = write_pem(tmp / f"{which}-ca.pem", ca)
        self.use(card_dir)

    def use(self, card_dir: Path) -> None:
        self.cert = write_pem(self.tmp / f"{card_dir.name}-{self.which}.pem", card_certificate(card_dir, self.which))

    def ocsp(self) -> str:
        proc = openssl("ocsp", "-issuer", str(self.ca), "-CAfile", str(self.ca), "-cert", str(self.cert),
                       "-url", f"{self.base}ocsp/{self.which}", "-resp_text")
        assert proc.returncode == 0, proc.stderr
        assert "Response verify OK" in proc.stderr, proc.stderr
        assert "WARNING: no nonce in response" not in proc.stderr + proc.stdout
        return proc.stdout

    def crl_verify(self) -> tuple[int, str]:
        status, kind, der = fetch(f"{self.base}crl/{self.which}.crl")
        assert (status, kind) == (200, "application/pkix-crl")
        crl = self.tmp / f"{self.which}.crl.pem"
        crl.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
        proc = openssl("verify", "-crl_check", "-CAfile", str(self.ca), "-CRLfile", str(crl), str(self.cert))
        return proc.returncode, proc.stdout + proc.stderr


def status_line(text: str, cert: Path) -> str:
    return re.search(rf"^{re.escape(str(cert))}: (\w+)$", text, re.M).group(1)


def test_openssl_ocsp_and_crl_follow_hold_lift_reissue(card_dir: Path, private_authority: Path, tmp_path: Path) -> None:
    authority = Authority.load(private_authority)
    with running_authority(private_authority) as base:
        for which in ("auth", "sign"):
            rp = Relying(base, which, card_dir, authority, tmp_path)
            assert status_line(rp.ocsp(), rp.cert) == "good"
            assert rp.crl_verify() == (0, f"{rp.cert}: OK\n")

        assert main(["admin", str(card_dir), "hold"]) == 0
        for which in ("auth", "sign"):
            rp = Relying(base, which, card_dir, authority, tmp_path)
            text = rp.ocsp()
            assert status_line(text, rp.cert) == "revoked"
            assert "Reason: certificateHold" in text
            assert re.search(r"Revocation Time: \w+ +\d+ [\d:]+ \d{4} GMT", text)
            code, out = rp.crl_verify()
            assert code == 2 and "certificate revoked" in out

        assert main(["admin", str(card_dir), "lift"]) == 0
        rp = Relying(base, "sign", card_dir, authority, tmp_path)
        assert status_line(rp.ocsp(), rp.cert) == "good"
        assert rp.crl_verify() == (0, f"{rp.cert}: OK\n")

        new_dir = tmp_path / "reissued"
        assert main(["admin", str(card_dir), "reissue", str(new_dir)]) == 0
        for which in ("auth", "sign"):
            rp = Relying(base, which, card_dir, authority, tmp_path)
            text = rp.ocsp()
            assert status_line(text, rp.cert) == "revoked" and "Reason: superseded" in text
            code, out = rp.crl_verify()
            assert code == 2 and "certificate revoked" in out
            rp.use(new_dir)
            assert status_line(rp.ocsp(), rp.cert) == "good"
            assert rp.crl_verify() == (0, f"{rp.cert}: OK\n")


def test_nonce_unknown_malformed_get_and_methods(card_dir: Path, private_authority: Path, tmp_path: Path) -> None:
    authority = Authority.load(private_authority)
    ca, cert = authority.auth_ca_certificate, card_certificate(card_dir, "auth")
    ca_pem = write_pem(tmp_path / "ca.pem", ca)
    with running_authority(private_authority) as base:
        url = f"{base}ocsp/auth"
        # openssl sends a nonce and checks the echo; -resp_text shows it.
        proc = openssl("ocsp", "-issuer", str(ca_pem), "-CAfile", str(ca_pem), "-serial", "0x1234", "-url", url,
                       "-resp_text")
        assert proc.returncode == 0 and "0x1234: unknown" in proc.stdout, proc.stdout + proc.stderr
        assert "OCSP Nonce:" in proc.stdout and "WARNING: no nonce" not in proc.stderr
        # Our own nonce, by POST and by GET (base64 in the path, RFC 6960 A.1).
        request = (ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
                   .add_extension(x509.OCSPNonce(b"\x07" * 20), critical=False).build())
        der = request.public_bytes(serialization.Encoding.DER)
        status, kind, body = fetch(url, der)
        assert (status, kind) == (200, "application/ocsp-response")
        answer = ocsp.load_der_ocsp_response(body)
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x07" * 20
        encoded = urllib.request.quote(base64.b64encode(der).decode(), safe="")
        status, _, body = fetch(f"{url}/{encoded}")
        assert status == 200 and ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
        # Malformed: an OCSP malformedRequest response with HTTP 200, never a 500.
        for garbage in (b"garbage", b"\x30\x80", b""):
            status, kind, body = fetch(url, garbage)
            assert (status, kind) == (200, "application/ocsp-response")
            assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        status, _, body = fetch(f"{url}/!!notbase64!!")
        assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        # The sign CA's responder is not the auth CA's.
        _, _, body = fetch(f"{base}ocsp/sign", der)
        assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
        # HTTP-level mistakes.
        assert fetch(url, der, method="PUT")[0] == 405
        assert fetch(f"{base}crl/auth.crl", b"x", method="POST")[0] == 405
        assert fetch(url, der, content_type="text/plain")[0] == 415
        assert fetch(f"{base}ocsp/nobody", der)[0] == 404
        assert fetch(f"{base}crl/nobody.crl")[0] == 404
        status, kind, body = fetch(f"{base}ca/auth.crt")
        assert (status, kind) == (200, "application/pkix-cert") and x509.load_der_x509_certificate(body) == ca


def test_ca_signed_responses_verify_with_openssl(card_dir: Path, private_authority: Path, tmp_path: Path) -> None:
    assert main(["authority", "config", "--ocsp-signer", "ca"]) == 0
    authority = Authority.load(private_authority)
    with running_authority(private_authority) as base:
        rp = Relying(base, "sign", card_dir, authority, tmp_path)
        text = rp.ocsp()
        assert status_line(text, rp.cert) == "good"
        assert "Responder Id: " in text and "Certificate:" not in text  # no responder certificate included


def test_verify_uses_the_aia_of_a_card_issued_for_this_service(private_authority: Path, tmp_path: Path, capsys) -> None:
    from mynaemu.testing import issue_test_card

    sock = loopback_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # only to learn a free port for the base URL the certificates will name
    assert main(["authority", "config", "--base-url", f"http://127.0.0.1:{port}/"]) == 0
    card_dir = issue_test_card(tmp_path / "card").path
    (tmp_path / "msg").write_bytes(MESSAGE)
    (tmp_path / "sig").write_bytes(card_signature(card_dir, MESSAGE))
    args = ["verify", "--signature", str(tmp_path / "sig"), "--data", str(tmp_path / "msg"), "--card", str(card_dir)]
    capsys.readouterr()
    with running_authority(private_authority, port=port) as base:
        assert base == f"http://127.0.0.1:{port}/"
        assert main(args) == 0
        assert capsys.readouterr().out.rstrip().endswith(f"good (OCSP {base}ocsp/sign)")
        assert main([*args, "--crl"]) == 0  # the CDP, fetched over HTTP
        assert capsys.readouterr().out.rstrip().endswith(f"not on the CRL ({base}crl/sign.crl)")
        lifecycle.revoke(card_dir, "cessationOfOperation")
        assert main(args) == 1
        assert "is revoked (cessationOfOperation) since" in capsys.readouterr().out


def test_authority_serve_command(card_dir: Path, private_authority: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "mynaemu", "authority", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.match(r"Serving the emulated JPKI authority at (http://127\.0\.0\.1:(\d+)/) ", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        base = match.group(1)
        rp = Relying(base, "auth", card_dir, Authority.load(private_authority), tmp_path)
        assert status_line(rp.ocsp(), rp.cert) == "good"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    refused = subprocess.run([sys.executable, "-m", "mynaemu", "authority", "serve", "--host", "0.0.0.0"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("mynaemu authority: error: --host 0.0.0.0: the emulated authority listens on "
                                      "loopback only (127.0.0.1, ::1)")
