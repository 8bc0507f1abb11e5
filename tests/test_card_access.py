"""Every EF's access rule: no credential, a wrong one, the right one, a blocked key (docs/card-interface.md §2)."""

from __future__ import annotations

import pytest

from mynaemu import Card
from mynaemu.profile import Profile

from .cardkit import key_locations, right_values, wrong_value
from .conftest import select_ap, select_ef, tx, verify

PROFILE = Profile.load()
BINARY_EFS = [
    (ap, fid, ef) for ap, spec in PROFILE.aps.items() for fid, ef in spec.efs.items() if ef.type == "binary"
]


def expected_body(card: Card, ef) -> bytes:
    content = card.dir.content.get(ef.content, b"") if ef.content else b""
    size = ef.size or len(content)
    return content + bytes((ef.filler,)) * (size - len(content))


def read_whole(card: Card, ap: str, fid: int) -> bytes:
    select_ap(card, ap)
    select_ef(card, f"{fid:04X}")
    return tx(card, "00B00000000000")  # extended Le: the whole EF


def present(card: Card, key: str, value: str) -> bytes:
    _ap, fid = key_locations(card)[key]
    select_ef(card, f"{fid:04X}")
    return verify(card, value)


@pytest.mark.parametrize(("ap", "fid", "ef"), BINARY_EFS, ids=[f"{a}-{f:04X}" for a, f, _ in BINARY_EFS])
def test_binary_ef_access(card: Card, ap: str, fid: int, ef) -> None:
    body = expected_body(card, ef)
    if ef.read is None:
        assert read_whole(card, ap, fid) == body + b"\x90\x00"
        return
    if not ef.read:
        assert read_whole(card, ap, fid) == b"\x69\x82"
        return
    # No credential.
    assert read_whole(card, ap, fid) == b"\x69\x82"
    values = right_values(card)
    for key in sorted(ef.read):
        # A wrong credential opens nothing.
        select_ap(card, ap)
        resp = present(card, key, wrong_value(values[key]))
        assert resp[0] == 0x63
        select_ef(card, f"{fid:04X}")
        assert tx(card, "00B00000000000") == b"\x69\x82"
        # The right one opens it.
        assert present(card, key, values[key]) == b"\x90\x00"
        select_ef(card, f"{fid:04X}")
        assert tx(card, "00B00000000000") == body + b"\x90\x00"


@pytest.mark.parametrize(
    ("ap", "fid", "wrong_key"),
    [("text", 0x0001, "text-b"), ("text", 0x0002, "text-a"), ("visual", 0x0005, "visual-b"),
     ("jpki", 0x0001, "auth"), ("visual", 0x0001, "visual-a")],
)
def test_credentials_open_only_their_efs(card: Card, ap: str, fid: int, wrong_key: str) -> None:
    values = right_values(card)
    select_ap(card, ap)
    assert present(card, wrong_key, values[wrong_key]) == b"\x90\x00"
    select_ef(card, f"{fid:04X}")
    assert tx(card, "00B0000000") == b"\x69\x82"


def test_blocked_key_denies_with_6984(card: Card) -> None:
    values = right_values(card)
    select_ap(card, "jpki")
    for _ in range(5):
        present(card, "sign", wrong_value(values["sign"]))
    select_ef(card, "0001")
    assert tx(card, "00B0000004") == b"\x69\x84"
    # Signing with the blocked key's EF: 6984 too.
    select_ef(card, "001A")
    assert tx(card, "802A008003010203" + "00") == b"\x69\x84"


def test_read_binary_forms(card: Card) -> None:
    select_ap(card, "jpki")
    select_ef(card, "000A")
    cert = card.dir.content["jpki.auth_cert"]
    assert tx(card, "00B0000004") == cert[:4] + b"\x90\x00"
    # The TEX2E trace: the rest with an extended Le.
    rest = len(cert) - 4
    assert tx(card, f"00B0000400{rest:04X}") == cert[4:] + b"\x90\x00"
    # SFI form: P1 = 80|SFI, P2 = offset.
    assert tx(card, "00B08A1004") == cert[0x10:0x14] + b"\x90\x00"
    # SFI form with extended Le 65536: the whole physical file.
    assert tx(card, "00B08A00000000") == cert + bytes(2048 - len(cert)) + b"\x90\x00"
    # Past the end, and at the end.
    assert tx(card, "00B0080000") == b"\x6b\x00"
    assert tx(card, "00B007FF00") == b"\x00\x90\x00"
    assert tx(card, "00B0800000") == b"\x6a\x82"
    assert tx(card, "00B0000000AA") == b"\x67\x00"
    assert tx(card, "00B00000") == b"\x67\x00"


def test_read_binary_short_reads_at_end_of_file(card: Card) -> None:
    values = right_values(card)
    select_ap(card, "text")
    present(card, "text", values["text"])
    select_ef(card, "0001")
    resp = tx(card, "00B0000000")
    my_number = card.dir.content["text.my_number"]
    assert resp == my_number + b"\x90\x00"
    assert resp[:3] == b"\xff\x10\x0c" and resp[3:15] == values["text-a"].encode() and resp[15:17] == b"\xff\xff"


def test_read_binary_needs_current_ef_and_transparent_ef(card: Card) -> None:
    select_ap(card, "jpki")
    assert tx(card, "00B0000004") == b"\x69\x86"
    select_ef(card, "0018")
    assert tx(card, "00B0000004") == b"\x69\x81"
    select_ef(card, "0017")
    assert tx(card, "00B0000004") == b"\x69\x81"


def test_read_record_on_common_ap(card: Card) -> None:
    select_ap(card, "common")
    record = card.dir.content["common.card_id"][0]
    assert tx(card, "00B2010C00") == record + b"\x90\x00"  # myna: record 1, SFI 1
    assert record[:2] == b"\x01\x1c" and len(record) == 30
    select_ef(card, "0001")
    assert tx(card, "00B2010400") == record + b"\x90\x00"
    assert tx(card, "00B2020400") == b"\x6a\x83"
    assert tx(card, "00B2011400") == b"\x69\x82"  # EF 0002 needs the PIN
    values = right_values(card)
    present(card, "common", values["common"])
    assert tx(card, "00B2011400") == card.dir.content["common.key_ref"][0] + b"\x90\x00"
    select_ap(card, "jpki")
    select_ef(card, "000A")
    assert tx(card, "00B2010400") == b"\x69\x81"
