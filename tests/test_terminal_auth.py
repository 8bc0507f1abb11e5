"""80 A2 in the JPKI AP: a terminal CV certificate checked against the emulated terminal CA (§5.2)."""

from __future__ import annotations

import pytest

from mynaemu import Card, pki
from mynaemu.cv_issuers import TERMINAL_CA_KEY_ID, CvIssuers

from .conftest import select_ap, select_ef, tx

OK = b"\x90\x00"
TERMINAL_KEY_ID = pki.key_id("9000901")


@pytest.fixture(scope="module")
def terminal_key():
    return pki.generate_rsa_key()


@pytest.fixture
def certificate(terminal_key) -> bytes:
    """A terminal certificate as the emulated terminal CA issues it (7F21 {5F4E body, 5F37 sig})."""
    return CvIssuers.load_or_create().terminal_certificate(TERMINAL_KEY_ID, terminal_key.public_key())


def load_cert(card: Card, body_part: bytes) -> bytes:
    return card.transmit(bytes.fromhex("80A206C1") + b"\x00" + len(body_part).to_bytes(2, "big") + body_part)


def send_sig(card: Card, sig_part: bytes) -> bytes:
    return card.transmit(bytes.fromhex("80A200C1") + b"\x00" + len(sig_part).to_bytes(2, "big") + sig_part)


def split(cert: bytes) -> tuple[bytes, bytes]:
    """The two commands' data: 7F21 header + the 5F4E object, then the 5F37 object."""
    return cert[:5 + 302], cert[5 + 302 :]


@pytest.fixture
def at_0016(card: Card) -> Card:
    assert select_ap(card, "jpki") == OK
    assert select_ef(card, "0016") == OK
    return card


def test_the_card_holds_the_terminal_ca_key(card: Card) -> None:
    ca = card.applications["jpki"].efs[0x0016]
    assert ca.key_id == TERMINAL_CA_KEY_ID
    assert ca.public_key.public_numbers() == CvIssuers.load_or_create().terminal_ca.public_key().public_numbers()
    select_ap(card, "jpki")
    select_ef(card, "0016")
    assert tx(card, "00B0000000") == b"\x69\x81"  # a key reference is never read


def test_a_valid_chain_answers_9000(at_0016: Card, certificate: bytes, terminal_key) -> None:
    body, sig = split(certificate)
    assert len(body) == 307 and len(sig) == 261
    assert load_cert(at_0016, body) == OK
    assert send_sig(at_0016, sig) == OK
    key_id, key = at_0016.session.terminal
    assert key_id == TERMINAL_KEY_ID and key.public_numbers() == terminal_key.public_key().public_numbers()
    select_ap(at_0016, "jpki")  # the session ends with the selection
    assert at_0016.session.terminal is None


def test_a_bad_signature_answers_6700(at_0016: Card, certificate: bytes) -> None:
    body, sig = split(certificate)
    assert load_cert(at_0016, body) == OK
    assert send_sig(at_0016, sig[:-1] + bytes((sig[-1] ^ 1,))) == b"\x67\x00"
    assert at_0016.session.terminal is None
    assert send_sig(at_0016, sig) == b"\x69\x85"  # the body was used up: load it again


def test_a_certificate_of_another_issuer_answers_6700(at_0016: Card, terminal_key) -> None:
    rogue = pki.build_cv_certificate(pki.generate_rsa_key(), pki.key_id("9000092"), TERMINAL_KEY_ID,
                                     terminal_key.public_key())
    assert load_cert(at_0016, split(rogue)[0]) == b"\x67\x00"
    # The right issuer ID but the wrong signer: refused at the signature.
    forged = pki.build_cv_certificate(pki.generate_rsa_key(), TERMINAL_CA_KEY_ID, TERMINAL_KEY_ID,
                                      terminal_key.public_key())
    body, sig = split(forged)
    assert load_cert(at_0016, body) == OK
    assert send_sig(at_0016, sig) == b"\x67\x00"


@pytest.mark.parametrize("junk", [b"\x00" * 307, b"\x7f\x21\x00", bytes(range(200))])
def test_junk_answers_6700(at_0016: Card, junk: bytes) -> None:
    assert load_cert(at_0016, junk) == b"\x67\x00"


@pytest.mark.parametrize("p1p2", ["0000", "00AE", "8000", "00B6", "06C0", "01C1"])
def test_other_p1_p2_answer_6a86(at_0016: Card, certificate: bytes, p1p2: str) -> None:
    body, _ = split(certificate)
    assert at_0016.transmit(bytes.fromhex("80A2" + p1p2) + b"\x00\x01\x33" + body) == b"\x6a\x86"


def test_without_ef_0016_selected(card: Card, certificate: bytes) -> None:
    select_ap(card, "jpki")
    assert load_cert(card, split(certificate)[0]) == b"\x69\x85"
    select_ef(card, "000A")
    assert load_cert(card, split(certificate)[0]) == b"\x69\x85"


def test_signature_first_answers_6985(at_0016: Card, certificate: bytes) -> None:
    assert send_sig(at_0016, split(certificate)[1]) == b"\x69\x85"


@pytest.mark.parametrize("ap", ["text", "visual", "juki", "common"])
def test_other_aps_do_not_know_80a2(card: Card, ap: str, certificate: bytes) -> None:
    select_ap(card, ap)
    assert load_cert(card, split(certificate)[0]) == b"\x6d\x00"
