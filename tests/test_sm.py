"""SET SESSION KEY and secure messaging in the text AP (docs/card-interface.md §5.2, §7).

The client side here is written from the spec's description, independently of ``mynaemu.sm``:
its own IV derivation, CBC, ISO padding and DO building with ``cryptography`` primitives. The
recorded vectors were computed from the description (key 00..0F): IV(N) = AES-ECB(key, N).
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mynaemu import Card
from mynaemu.sm import SmCipher, pad, unpad
from mynaemu.sm_client import SecureMessagingClient, SecureMessagingError

from .conftest import SECRETS, select_ap, select_ef, tx, verify

OK = b"\x90\x00"
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
KEY = bytes(range(16))
VECTORS = {  # (counter, plaintext) -> cryptogram, from the spec's description (see module doc)
    (1, b"0001"): "7dec792d7079b55d9d287f25806f17cc",
    (2, b""): "add7c38c973c10bacced134615c5f69b",
    (3, b"123456789012345"): "18c7d5d45f58c8759ed3e187aea094fd",
    (3, b"0123456789abcdef"): "fceb432419da456610c69c43e9f81b35ae2953449d062d301b88e2f96dc7dcd0",
}


# -- an independent client, from the spec ----------------------------------------------------------
class SpecClient:
    """Secure messaging as the spec describes it, sharing no code with the card."""

    def __init__(self, card: Card, seed: bytes) -> None:
        self.card, self.key, self.n = card, seed[:16], 0

    def iv(self, n: int) -> bytes:
        enc = Cipher(algorithms.AES(self.key), modes.ECB()).encryptor()
        return enc.update(n.to_bytes(16, "big")) + enc.finalize()

    def crypt(self, n: int, data: bytes, decrypt: bool = False) -> bytes:
        c = Cipher(algorithms.AES(self.key), modes.CBC(self.iv(n)))
        op = c.decryptor() if decrypt else c.encryptor()
        return op.update(data) + op.finalize()

    def send(self, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None, *,
             cla: int = 0x08, cryptogram: bytes | None = None) -> tuple[bytes, bytes]:
        """One SM command; returns (plain response data, SW)."""
        self.n += 1
        body = b""
        if data or cryptogram is not None:
            padded = data + b"\x80" + b"\x00" * (15 - len(data) % 16)
            cg = b"\x01" + (cryptogram if cryptogram is not None else self.crypt(self.n, padded))
            body += b"\x86" + _len(len(cg)) + cg
        if le is not None:
            body += b"\x96\x03\x00" + le.to_bytes(2, "big")
        head = bytes((cla, ins, p1, p2))
        # Extended lengths: Lc and the data objects if any, and an Le of 0000 (all there is).
        apdu = head + (b"\x00" + len(body).to_bytes(2, "big") + body + b"\x00\x00" if body else b"\x00\x00\x00")
        rsp = self.card.transmit(apdu)
        sw, out = rsp[-2:], rsp[:-2]
        if not out:
            return b"", sw
        assert out[0] == 0x86
        hdr = 2 if out[1] < 0x80 else 2 + (out[1] & 0x7F)
        cg = out[hdr:]
        assert cg[0] == 0x01
        plain = self.crypt(self.n, cg[1:], decrypt=True).rstrip(b"\x00")
        assert plain.endswith(b"\x80")
        return plain[:-1], sw


def _len(n: int) -> bytes:
    return bytes((n,)) if n < 0x80 else (b"\x81" + bytes((n,)) if n < 0x100 else b"\x82" + n.to_bytes(2, "big"))


def _sm_public_key(card: Card):
    return card.applications["text"].session_key.public_key()


def _ciphertext(card: Card, seed: bytes) -> bytes:
    return _sm_public_key(card).encrypt(b"\xa0\x22\x80\x20" + seed, OAEP)


def set_session_key(card: Card, ciphertext: bytes) -> bytes:
    return card.transmit(bytes.fromhex("80AE0000") + b"\x00" + len(ciphertext).to_bytes(2, "big") + ciphertext)


@pytest.fixture
def text_card(card: Card) -> Card:
    """The text AP selected and its PIN verified in clear."""
    assert select_ap(card, "text") == OK
    assert select_ef(card, "0011") == OK
    assert verify(card, SECRETS["text"]) == OK
    return card


@pytest.fixture
def session(text_card: Card) -> SpecClient:
    seed = os.urandom(32)
    assert set_session_key(text_card, _ciphertext(text_card, seed)) == OK
    return SpecClient(text_card, seed)


# -- SET SESSION KEY -----------------------------------------------------------------------------
def test_set_session_key_needs_the_pin(card: Card) -> None:
    select_ap(card, "text")
    assert set_session_key(card, _ciphertext(card, os.urandom(32))) == b"\x69\x82"
    select_ef(card, "0014")  # 照合番号A opens the My Number, not a session
    from mynaemu.testing import TEST_MY_NUMBER
    assert verify(card, TEST_MY_NUMBER) == OK
    assert set_session_key(card, _ciphertext(card, os.urandom(32))) == b"\x69\x82"


@pytest.mark.parametrize(("ap", "sw"), [("jpki", "6982"), ("juki", "6982"), ("common", "66F1"), ("visual", "66F1")])
def test_set_session_key_elsewhere(card: Card, ap: str, sw: str) -> None:
    text_key = _sm_public_key(card)
    select_ap(card, ap)
    ct = text_key.encrypt(b"\xa0\x22\x80\x20" + bytes(32), OAEP)
    assert set_session_key(card, ct) == bytes.fromhex(sw)


def test_set_session_key_in_the_power_on_state_is_unknown(card: Card) -> None:
    assert set_session_key(card, bytes(256)) == b"\x6d\x00"


def test_set_session_key_refusals(text_card: Card) -> None:
    n = _sm_public_key(text_card).public_numbers().n
    good = _ciphertext(text_card, bytes(32))
    assert text_card.transmit(bytes.fromhex("80AE0100") + b"\x00\x01\x00" + good) == b"\x6a\x86"
    assert set_session_key(text_card, good[:-1]) == b"\x67\x00"
    assert set_session_key(text_card, (n + 1).to_bytes(256, "big")) == b"\x6f\x00"  # not below the modulus
    assert set_session_key(text_card, (n - 1).to_bytes(256, "big")) == b"\x6a\x80"  # no OAEP inside
    wrong_shape = _sm_public_key(text_card).encrypt(b"\xa0\x21\x80\x1f" + bytes(31), OAEP)
    assert set_session_key(text_card, wrong_shape) == b"\x6a\x80"
    assert text_card.session.sm is None
    assert set_session_key(text_card, good) == OK


# -- secure messaging ------------------------------------------------------------------------------
def test_sm_select_and_read_give_the_my_number_encrypted(session: SpecClient) -> None:
    body = session.card.applications["text"].efs[0x0001].body
    assert session.send(0xA4, 0x02, 0x0C, b"\x00\x01") == (b"", OK)
    data, sw = session.send(0xB0, 0x00, 0x00, le=17)
    assert (data, sw) == (body, OK)
    # The answer went over the wire encrypted: the My Number is nowhere in it.
    session.n += 1
    raw = session.card.transmit(bytes.fromhex("08B00000000005") + b"\x96\x03\x00\x00\x11" + b"\x00\x00")
    assert raw[-2:] == OK and body[:12] not in raw


def test_sm_verify_and_a_long_read(session: SpecClient) -> None:
    assert session.send(0xA4, 0x02, 0x0C, b"\x00\x11") == (b"", OK)
    assert session.send(0x20, 0x00, 0x80) == (b"", b"\x63\xc3")  # the retry query through SM
    assert session.send(0x20, 0x00, 0x80, SECRETS["text"].encode()) == (b"", OK)
    assert session.send(0xA4, 0x02, 0x0C, b"\x00\x02") == (b"", OK)
    basic4 = session.card.applications["text"].efs[0x0002].body
    assert session.send(0xB0, 0x00, 0x00, le=512) == (basic4, OK)  # extended Le inside 96


def test_the_counter_advances_on_refused_commands_too(session: SpecClient) -> None:
    assert session.send(0xA4, 0x02, 0x0C, b"\x99\x99") == (b"", b"\x6a\x82")  # refused, counted
    assert session.send(0xEE, 0x00, 0x00) == (b"", b"\x6d\x00")  # unknown, counted
    assert session.send(0xA4, 0x02, 0x0C, b"\x00\x01") == (b"", OK)  # N = 3 works
    session.n -= 1  # a client that did not count the last one
    assert session.send(0xA4, 0x02, 0x0C, b"\x00\x01") == (b"", b"\x69\x88")


def test_a_bad_cryptogram_ends_the_session(session: SpecClient) -> None:
    # A cryptogram of 16 zero bytes under the right key and IV: it decrypts to no ISO padding.
    assert session.send(0xA4, 0x02, 0x0C, cryptogram=session.crypt(session.n + 1, bytes(16))) == (b"", b"\x69\x88")
    for ins, p2, data in ((0xA4, 0x0C, b"\x00\x01"), (0xB0, 0x00, b""), (0x20, 0x80, b"")):
        assert session.send(ins, 0x02 if ins == 0xA4 else 0x00, p2, data, le=None if data else 16)[1] == b"\x69\xfc"
    assert tx(session.card, "00A4020C020001") == OK  # plain commands go on
    assert session.card.transmit(bytes.fromhex("08A4020C00")) == b"\x69\xfc"


@pytest.mark.parametrize("junk", ["", "8601", "8603010000", "9602", "870500112233", "86"])
def test_malformed_sm_objects_answer_6988(session: SpecClient, junk: str) -> None:
    data = bytes.fromhex(junk)
    apdu = bytes.fromhex("08A4020C") + (bytes((len(data),)) + data if data else b"")
    want = b"\x69\x88" if data else b"\x6a\x86"  # no data at all: a SELECT with no file id
    if not data:
        assert session.card.transmit(apdu)[-2:] in (want, b"\x67\x00")
        return
    assert session.card.transmit(apdu) == want


def test_integrity_class_answers_6987(session: SpecClient) -> None:
    assert session.send(0xA4, 0x02, 0x0C, b"\x00\x01", cla=0x0C) == (b"", b"\x69\x87")


@pytest.mark.parametrize("how", ["select-ap", "reselect-text", "reset", "power-off"])
def test_the_session_ends(session: SpecClient, how: str) -> None:
    card = session.card
    if how == "select-ap":
        select_ap(card, "jpki")
    elif how == "reselect-text":
        select_ap(card, "text")
    elif how == "reset":
        card.reset()
    else:
        card.power_off()
        card.power_on()
    assert card.session.sm is None
    assert card.transmit(bytes.fromhex("08A4020C0A860901") + bytes(8)) == b"\x68\x82"  # SM SELECT: no session
    assert card.transmit(bytes.fromhex("08B0000005960300001100")) == b"\x69\xfc"


# -- the API's client helper -----------------------------------------------------------------------
def test_the_client_helper_round_trips_with_the_card(text_card: Card) -> None:
    client = SecureMessagingClient(text_card.transmit)
    client.open()
    body = text_card.applications["text"].efs[0x0001].body
    assert client.transmit(bytes.fromhex("00A4020C020001")) == OK
    assert client.transmit(bytes.fromhex("00B0000011")) == body + OK
    assert client.transmit(bytes.fromhex("00A4020C020099")) == b"\x6a\x82"
    assert client.counter == 3


def test_the_client_helper_and_the_spec_client_agree(text_card: Card) -> None:
    seed = bytes(range(32))
    helper = SecureMessagingClient(lambda apdu: b"\x90\x00", seed=seed)
    spec = SpecClient(text_card, seed)
    wrapped = helper.wrap(bytes.fromhex("00A4020C020001"))
    spec.n = 1
    padded = b"\x00\x01\x80" + bytes(13)
    assert wrapped[7:] == b"\x86\x11\x01" + spec.crypt(1, padded)


def test_the_client_helper_refuses_without_the_pin(card: Card) -> None:
    select_ap(card, "text")
    with pytest.raises(SecureMessagingError, match="verify the PIN first"):
        SecureMessagingClient(card.transmit).open()


@pytest.mark.parametrize(("counter", "plain"), list(VECTORS))
def test_recorded_vectors(counter: int, plain: bytes) -> None:
    assert SmCipher(KEY).encrypt(counter, plain).hex() == VECTORS[(counter, plain)]
    assert SmCipher(KEY).decrypt(counter, bytes.fromhex(VECTORS[(counter, plain)])) == plain


def test_iso_padding_edges() -> None:
    for n in range(0, 40):
        data = os.urandom(n)
        assert len(pad(data)) % 16 == 0 and unpad(pad(data)) == data
    for bad in (b"", bytes(16), b"\x80" + bytes(15) + bytes(16), b"\x01" * 16):
        with pytest.raises(ValueError):
            unpad(bad)
