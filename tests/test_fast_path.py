"""The fast path of ``Card.transmit`` (SELECT EF with P2 0C, short READ BINARY) answers as the dispatch.

Two copies of one card get the same random command streams: one through ``transmit`` (fast path
first), the other through ``_dispatch`` only. Every answer, the current EF and the security
status must be equal after every command.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from mynaemu import Card
from mynaemu.profile import Profile

from .conftest import AID, SECRETS

PROFILE = Profile.load()
FIDS = sorted({fid for ap in PROFILE.aps.values() for fid in ap.efs} | {0x0000, 0x2F10, 0xFFFF})


def _commands(rng: random.Random) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.08:
            aid = bytes.fromhex(rng.choice(list(AID.values())))
            out.append(bytes((0x00, 0xA4, 0x04, 0x0C, len(aid))) + aid)
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


def test_the_fast_path_answers_as_the_dispatch(card_dir: Path, tmp_path: Path) -> None:
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
