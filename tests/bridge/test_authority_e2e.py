"""End to end: pkcs11-tool signs through pcscd with the served card; ``mynaemu verify`` judges it
against the running authority's OCSP responder, through hold, lift and reissue."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_real_clients import SIGN_TOKEN, OpenSC, Served, opensc, served  # noqa: F401 - fixtures

from mynaemu import Card
from mynaemu.cli import main
from tests.authority_kit import running_authority
from tests.conftest import SECRETS

pytestmark = [pytest.mark.pcsc, pytest.mark.opensc]
MESSAGE = b"a contract, signed with the My Number card\n"


def pkcs11_sign(opensc: OpenSC, reader: str, out: Path) -> Path:  # noqa: F811
    (opensc.workdir / "in").write_bytes(MESSAGE)
    slot = opensc.p11_slots(reader)[SIGN_TOKEN][0]
    opensc.p11("--slot", slot, "--login", "--pin", SECRETS["sign"], "--sign", "--id", "02",
               "-m", "SHA256-RSA-PKCS", "-i", "in", "-o", str(out))
    assert len(out.read_bytes()) == 256
    return out


def verify(capsys, signature: Path, card_dir: Path, ocsp_url: str) -> tuple[int, str]:
    code = main(["verify", "--signature", str(signature), "--data", str(signature.parent / "in"),
                 "--card", str(card_dir), "--key", "sign", "--ocsp", ocsp_url])
    return code, capsys.readouterr().out.strip()


def test_pkcs11_signature_valid_held_lifted_superseded(opensc: OpenSC, served: Served, private_authority: Path,  # noqa: F811
                                                       tmp_path: Path, capsys) -> None:
    with running_authority(private_authority) as base:
        url = f"{base}ocsp/sign"
        old_sig = pkcs11_sign(opensc, served.reader, tmp_path / "old.sig")
        code, line = verify(capsys, old_sig, served.card_dir, url)
        assert code == 0 and line.startswith("VALID: PKCS#1 v1.5 sha256 signature by ") and line.endswith(f"good (OCSP {url})")

        assert main(["admin", str(served.card_dir), "hold"]) == 0  # beside the served card: no lock needed
        capsys.readouterr()
        code, line = verify(capsys, old_sig, served.card_dir, url)
        assert code == 1 and line.startswith("INVALID: the certificate is on hold (certificateHold) since ")
        assert line.endswith(f"(OCSP {url})")

        assert main(["admin", str(served.card_dir), "lift"]) == 0
        capsys.readouterr()
        assert verify(capsys, old_sig, served.card_dir, url)[0] == 0

        new_dir = tmp_path / "reissued"
        assert main(["admin", str(served.card_dir), "reissue", str(new_dir)]) == 0
        capsys.readouterr()
        code, line = verify(capsys, old_sig, served.card_dir, url)
        assert code == 1 and line.startswith("INVALID: the certificate is revoked (superseded) since ")

        served.slots.remove(0)  # the holder hands the old card back and gets the new one
        new_card = Card.load(new_dir)
        try:
            assert served.slots.insert(0, new_card) == served.reader
            new_sig = pkcs11_sign(opensc, served.reader, tmp_path / "new.sig")
            code, line = verify(capsys, new_sig, new_dir, url)
            assert code == 0 and line.endswith(f"good (OCSP {url})"), line
            code, line = verify(capsys, new_sig, served.card_dir, url)  # the new signature is not the old card's
            assert code == 1 and "not made with this certificate's key" in line
        finally:
            served.slots.remove(0)
            new_card.close()
