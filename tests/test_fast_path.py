"""The fast path of ``Card.transmit`` (SELECT EF with P2 0C, short READ BINARY) answers as the dispatch.

Two copies of one card get the same random command streams: one through ``transmit`` (fast path
first), the other through ``_dispatch`` only. Every answer, the current EF and the security
status must be equal after every command.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from mynaemu import Card
from mynaemu.card import CardClosedError
from mynaemu.profile import Profile
from mynaemu.testing import issue_test_card

from .conftest import AID, SECRETS

PROFILE = Profile.load()
# Other drivers' AIDs that OpenSC probes (PIV, OpenPGP, a GIDS one, and a 17-byte name).
FOREIGN_AIDS = [bytes.fromhex(a) for a in ("A000000308000010000100", "D27600012401", "A000000397425446590201",
                                            "A0000000791000", "D2760001240102030405060708090A0B0C")]
FIDS = sorted({fid for ap in PROFILE.aps.values() for fid in ap.efs} | {0x0000, 0x2F10, 0xFFFF})


def _commands(rng: random.Random) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.08:
            aid = bytes.fromhex(rng.choice(list(AID.values())))
            out.append(bytes((0x00, 0xA4, 0x04, 0x0C, len(aid))) + aid)
        elif kind < 0.16:  # SELECT by AID as the probes send it: whole, partial, foreign, odd P2, with Le
            aid = rng.choice([bytes.fromhex(a) for a in AID.values()] + FOREIGN_AIDS)
            aid = aid[: rng.choice((len(aid), len(aid), 5, 7, 4))]
            apdu = bytes((rng.choice((0x00, 0x00, 0x80)), 0xA4, 0x04, rng.choice((0x0C, 0x00, 0x04, 0x02, 0x01)), len(aid)))
            out.append(apdu + aid + rng.choice((b"", b"", b"\x00")))
        elif kind < 0.45:
            fid = rng.choice(FIDS)
            out.append(bytes((0x00, 0xA4, rng.choice((0x00, 0x02, 0x01)), rng.choice((0x0C, 0x0C, 0x04, 0x00)), 0x02))
                       + fid.to_bytes(2, "big"))
        elif kind < 0.85:
            p1 = rng.choice((0x00, 0x00, 0x01, 0x02, 0x7F, 0x80 | rng.randrange(32)))
            out.append(bytes((0x00, 0xB0, p1, rng.randrange(256), rng.randrange(256))))
        elif kind < 0.95:
            value = rng.choice([v for v in SECRETS.values()] + ["0000", "ABC12X"]).encode()
            out.append(bytes((0x00, 0x20, 0x00, 0x80, len(value))) + value)
        else:
            out.append(rng.choice([b"\x00\xb0\x00\x00", b"\x08\xa4\x02\x0c\x02\x00\x01", b"\x00\xa4\x02\x0c\x02\x00",
                                   b"\x00\xb0\x00\x00\x00\x00\x10", b"\x80\xb0\x00\x00\x10"]))
    return out


@pytest.mark.parametrize("variant", PROFILE.variant_names())
def test_the_fast_path_answers_as_the_dispatch(variant: str, card_dir: Path, tmp_path: Path) -> None:
    # Every variant: one keeps the security status on re-selecting the current AP (D6), which the
    # remembered SELECT by AID answers must follow as the dispatch does.
    if variant != "default":
        card_dir = issue_test_card(tmp_path / variant, variant=variant).path
    other = tmp_path / "copy"
    shutil.copytree(card_dir, other)
    fast, slow = Card.load(card_dir), Card.load(other)
    fast.power_on()
    slow.power_on()
    hits = 0
    for apdu in _commands(random.Random(14)):
        with slow.mutex:
            want = slow._dispatch(apdu)
        got = fast.transmit(apdu)
        assert got == want, apdu.hex()
        f_ef, s_ef = fast.session.ef, slow.session.ef
        assert (f_ef.fid if f_ef else None) == (s_ef.fid if s_ef else None), apdu.hex()
        assert fast.session.verified == slow.session.verified and fast.current_ap == slow.current_ap
        hits += got[-2:] == b"\x90\x00"
    assert hits > 500  # the stream reached the fast path's cases, not only errors
    assert 10 <= len(fast._known_by_ap["mf"]) <= 64  # SELECT by AID answered from memory, and no more kept


def test_a_flood_of_foreign_aids_keeps_the_memory_bounded(card_dir: Path) -> None:
    with Card.load(card_dir) as card:
        for n in range(2000):
            aid = b"\xa0\x00" + n.to_bytes(4, "big")
            assert card.transmit(bytes((0x00, 0xA4, 0x04, 0x0C, len(aid))) + aid) == b"\x6a\x82"
        assert len(card._known_by_ap["mf"]) == 64
        assert card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001")) == b"\x90\x00"  # still answered
        assert card.current_ap == "jpki"
        card.close()
        with pytest.raises(CardClosedError):
            card.transmit(b"\xa0\x00" + (1).to_bytes(4, "big"))
        with pytest.raises(CardClosedError):  # a remembered answer is no way around a closed card
            card.transmit(bytes.fromhex("00A4040C06A00000000001"))


# -- the answers given without the lock -------------------------------------------------------------
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_SIGN_CERT = bytes.fromhex("00A4020C020001")  # readable with the sign PIN verified only
READ_HEAD = bytes.fromhex("00B0000004")


def test_a_kept_read_answer_is_never_given_without_its_pin(card_dir: Path) -> None:
    # One thread verifies the sign PIN and clears it again (SELECT of the AP), round after round;
    # others read the protected EF meanwhile, mostly from the answer it keeps. A read that got the
    # certificate must overlap a moment when the PIN could have been verified. Each round waits
    # until a reader has seen both the refusal and the certificate, so both sides are exercised.
    import threading

    card = Card.load(card_dir)
    pin = SECRETS["sign"].encode()
    verify_sign = bytes((0x00, 0x20, 0x00, 0x9B, len(pin))) + pin  # P2 80|SFI 1B: the current EF stays
    state = {"possible": False, "changes": 0}
    stop = threading.Event()
    saw = {b"\x90\x00": threading.Event(), b"\x69\x82": threading.Event()}
    violations: list[str] = []

    def mark(possible: bool) -> None:
        state["changes"] += 1
        state["possible"] = possible

    def reader() -> None:
        while not stop.is_set():
            before = (state["possible"], state["changes"])
            answer = card.transmit(READ_HEAD)
            after = (state["possible"], state["changes"])
            if answer[-2:] in saw:
                saw[answer[-2:]].set()
            if answer[-2:] == b"\x90\x00" and not before[0] and not after[0] and before[1] == after[1]:
                violations.append(f"the certificate while the PIN was not verified ({before}, {after})")

    workers = [threading.Thread(target=reader) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for _ in range(40):
            assert card.transmit(SELECT_JPKI) == b"\x90\x00"
            mark(False)  # the SELECT cleared the status
            assert card.transmit(SELECT_SIGN_CERT) == b"\x90\x00"
            saw[b"\x69\x82"].clear()
            assert saw[b"\x69\x82"].wait(10)  # a reader was refused in this window
            mark(True)  # from here the VERIFY may land at any moment
            assert card.transmit(verify_sign) == b"\x90\x00"
            saw[b"\x90\x00"].clear()
            assert saw[b"\x90\x00"].wait(10)  # ... and got the certificate once it had
            # the next round's SELECT is sent with the PIN still verified: "possible" holds
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        card.close()
    assert not violations, violations[:3]


def test_nothing_is_answered_after_close_returns(card_dir: Path) -> None:
    import threading

    card = Card.load(card_dir)
    for apdu in (SELECT_JPKI, bytes.fromhex("00A4020C02000A"), READ_HEAD, bytes.fromhex("00A4040009A0000003080000100000")):
        card.transmit(apdu)  # the READ answer kept, the probe's refusal remembered: both lock-free from now
    closed = threading.Event()
    late: list[bytes] = []
    refused = [0]

    def client(apdu: bytes) -> None:
        while True:
            was_closed = closed.is_set()
            try:
                answer = card.transmit(apdu)
            except CardClosedError:
                refused[0] += 1
                return
            if was_closed:
                late.append(answer)

    workers = [threading.Thread(target=client, args=(a,))
               for a in (READ_HEAD, bytes.fromhex("00A4040009A0000003080000100000"))]
    for w in workers:
        w.start()
    card.close()
    closed.set()
    for w in workers:
        w.join(30)
    assert late == [] and refused[0] == 2
