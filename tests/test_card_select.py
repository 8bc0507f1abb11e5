"""SELECT, power, ATR, class and instruction errors (docs/card-interface.md §1, §6, §9, D9, D12)."""

from __future__ import annotations

import pytest

from mynaemu import Card

from .conftest import AID, select_ap, select_ef, tx


def test_power_on_answers_contact_atr(card: Card) -> None:
    assert card.power_on() == bytes.fromhex("3BE000FF8131FE4514")
    assert card.reset() == bytes.fromhex("3BE000FF8131FE4514")


def test_contactless_profile_answers_type_b_pseudo_atr(card_dir) -> None:
    c = Card.load(card_dir, interface="contactless")
    atr = c.power_on()
    assert atr[:4] == bytes.fromhex("3B888001")
    assert atr == bytes.fromhex("3B888001000005E0B381A1007F")


@pytest.mark.parametrize("name", list(AID))
def test_select_every_application(card: Card, name: str) -> None:
    assert select_ap(card, name) == b"\x90\x00"
    assert card.current_ap == (None if name == "mf" else name)


def test_select_with_fci_and_fcp(card: Card) -> None:
    resp = tx(card, "00A404000AD392F00026010000000100")
    assert resp == bytes.fromhex("6F0C840AD392F000260100000001") + b"\x90\x00"
    resp = tx(card, "00A404040AD392F00026010000000100")
    assert resp == bytes.fromhex("620F820138840AD392F000260100000001") + b"\x90\x00"
    assert tx(card, "00A4020402000A00") == bytes.fromhex("620B80020800820101830200 0A".replace(" ", "")) + b"\x90\x00"
    assert tx(card, "00A4020002000A00") == bytes.fromhex("6F0B800208008201018302000A") + b"\x90\x00"


def test_unknown_aid_is_6a82_and_keeps_current_ap(card: Card) -> None:
    select_ap(card, "jpki")
    assert tx(card, "00A4040C07A0000000030000") == b"\x6a\x82"
    assert card.current_ap == "jpki"


def test_prefix_selects_text_ap(card: Card) -> None:
    assert tx(card, "00A4040C08D392100031000101") == b"\x90\x00"
    assert card.current_ap == "text"


def test_select_mf_refused_after_reset_noop_in_ap(card: Card) -> None:
    assert tx(card, "00A40000") == b"\x6a\x86"
    select_ap(card, "jpki")
    assert tx(card, "00A40000") == b"\x90\x00"
    assert card.current_ap == "jpki"
    assert tx(card, "00A4000C023F00") == b"\x6a\x82"


def test_select_ef(card: Card) -> None:
    select_ap(card, "jpki")
    assert select_ef(card, "000A") == b"\x90\x00"
    assert select_ef(card, "0018") == b"\x90\x00"
    assert select_ef(card, "0003") == b"\x6a\x82"
    assert select_ef(card, "3F00") == b"\x6a\x82"
    assert tx(card, "00A4020C0100") == b"\x67\x00"


def test_mf_level_files(card: Card) -> None:
    assert select_ef(card, "2F10") == b"\x6a\x82"
    assert select_ef(card, "001E") == b"\x90\x00"
    assert tx(card, "00B0000000") == b"\x69\x81"


@pytest.mark.parametrize(
    ("apdu", "status"),
    [
        ("01A4040C0AD392F000260100000001", "6881"),
        ("41A4040C0AD392F000260100000001", "6881"),
        ("81A4040C0AD392F000260100000001", "6881"),
        ("FFA4040C0AD392F000260100000001", "6E00"),
        ("C0A40000", "6E00"),
        ("10A4040C0AD392F000260100000001", "6884"),
        ("0CA4040C0AD392F000260100000001", "6987"),
        ("08A4040C0AD392F000260100000001", "6882"),
        ("08B0000004", "69FC"),
        ("00FF0000", "6D00"),
        ("00C00000", "6D00"),
        ("80A40000", "6D00"),
        ("00A4090C00", "6A86"),
        ("00A4090C0100", "6A86"),
        ("00A4", "6700"),
        ("00A4040C0AD392F0002601000000", "6700"),
    ],
)
def test_class_instruction_and_length_errors(card: Card, apdu: str, status: str) -> None:
    assert tx(card, apdu).hex().upper() == status


def test_get_challenge(card: Card) -> None:
    r1, r2 = tx(card, "0084000010"), tx(card, "0084000010")
    assert len(r1) == 18 and r1[-2:] == b"\x90\x00" and r1 != r2
    assert len(tx(card, "0084000000")) == 258
    assert tx(card, "00840000000100") == b"\x69\x85"
    assert tx(card, "0084010010") == b"\x6a\x86"
    select_ap(card, "text")
    assert tx(card, "0084000008")[-2:] == b"\x90\x00"


def test_get_data_at_card_manager(card: Card) -> None:
    content = card.dir.content
    resp = tx(card, "00CA004500")
    assert resp == content["mf.card_number"] + b"\x90\x00"
    assert tx(card, "00CA5F5100") == bytes.fromhex("E000FF8131FE4514") + b"\x90\x00"
    big = content["mf.cv_root_to_intermediate"]
    assert len(big) > 256
    assert tx(card, "00CA00F800") == b"\x67\x00"
    assert tx(card, "00CA00F8000000") == big + b"\x90\x00"
    assert tx(card, "00CA123400") == b"\x6a\x88"
    select_ap(card, "jpki")
    assert tx(card, "00CA004500") == b"\x6d\x00"


def test_internal_error_answers_6f00_and_card_lives(card: Card, monkeypatch) -> None:
    ap = card.applications["jpki"]

    def boom(*_a):
        raise RuntimeError("simulated fault")

    select_ap(card, "jpki")
    monkeypatch.setitem(card._table, 0xB0, boom)
    assert tx(card, "00B0000004") == b"\x6f\x00"
    monkeypatch.undo()
    assert select_ap(card, "jpki") == b"\x90\x00"
    assert ap.name == "jpki"
    select_ef(card, "000A")
    assert tx(card, "00B0000002") == b"\x30\x82\x90\x00"


def test_transmit_powers_on_an_unpowered_card(card_dir) -> None:
    c = Card.load(card_dir)
    assert not c.powered
    assert c.transmit(bytes.fromhex("00A4040C0AD392F000260100000001")) == b"\x90\x00"
    assert c.powered
