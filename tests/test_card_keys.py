"""PINs and check numbers: VERIFY, retry counters, lockout, change, security status (docs/card-interface.md §3, Decisions)."""

from __future__ import annotations

import pytest

from mynaemu import Card, admin

from .cardkit import key_locations, right_values, wrong_value
from .conftest import query, select_ap, select_ef, tx, verify

LIMITS = {"auth": 3, "sign": 5, "text": 3, "text-a": 10, "text-b": 10, "visual-a": 10, "visual-b": 10,
          "visual-birth": 10, "juki": 3, "common": 3}


def goto_key(card: Card, key: str) -> None:
    ap, fid = key_locations(card)[key]
    select_ap(card, ap)
    select_ef(card, f"{fid:04X}")


@pytest.mark.parametrize("key", list(LIMITS))
def test_lockout_at_limit_and_admin_unblock(card: Card, key: str) -> None:
    values = right_values(card)
    limit = LIMITS[key]
    goto_key(card, key)
    assert query(card) == bytes((0x63, 0xC0 | limit))
    assert card.tries_left(key) == limit
    for left in range(limit - 1, -1, -1):
        assert verify(card, wrong_value(values[key])) == bytes((0x63, 0xC0 | left))
        assert card.tries_left(key) == left
    # Blocked: the right value is refused, the query says 63C0, nothing changes.
    assert verify(card, values[key]) == b"\x69\x84"
    assert verify(card, wrong_value(values[key])) == b"\x69\x84"
    assert query(card) == b"\x63\xc0"
    assert card.tries_left(key) == 0
    # The state on disk agrees.
    assert Card.load(card.dir.path, read_only=True).tries_left(key) == 0
    admin.unblock(card, key)
    assert card.tries_left(key) == limit
    goto_key(card, key)
    assert verify(card, values[key]) == b"\x90\x00"


def test_query_spends_nothing_and_answers_63cx_after_success(card: Card) -> None:
    goto_key(card, "auth")
    assert query(card) == b"\x63\xc3"
    assert query(card) == b"\x63\xc3"
    assert verify(card, "1234") == b"\x90\x00"
    assert query(card) == b"\x63\xc3"  # D4: 63Cx even when verified
    assert verify(card, "9999") == b"\x63\xc2"
    assert query(card) == b"\x63\xc2"
    assert verify(card, "1234") == b"\x90\x00"  # a match restores the counter
    assert query(card) == b"\x63\xc3"
    assert Card.load(card.dir.path, read_only=True).tries_left("auth") == 3


def test_wrong_verify_clears_that_keys_status(card: Card) -> None:
    goto_key(card, "auth")
    assert verify(card, "1234") == b"\x90\x00"
    assert verify(card, "0000") == b"\x63\xc2"
    select_ef(card, "0017")
    assert tx(card, "802A00800301020300") == b"\x69\x82"


def test_verify_by_sfi_and_errors(card: Card) -> None:
    select_ap(card, "text")
    assert verify(card, "5678", p2=0x91) == b"\x90\x00"
    assert query(card, p2=0x94) == b"\x63\xca"
    assert query(card, p2=0x92) == b"\x63\xc0"  # key 0012, blocked on every card
    assert verify(card, "1234", p2=0x92) == b"\x69\x84"
    assert query(card, p2=0x9E) == b"\x6a\x88"
    assert query(card, p2=0x81) == b"\x6a\x88"  # EF 0001 is not a key
    assert tx(card, "00200180") == b"\x6a\x86"
    assert tx(card, "00200000") == b"\x6a\x86"
    select_ap(card, "jpki")
    assert query(card) == b"\x69\x86"  # no current EF
    select_ef(card, "000A")
    assert query(card) == b"\x69\x86"  # current EF is not a key
    assert tx(card, "0020009800") == b"\x67\x00"


def test_security_status_belongs_to_the_selected_ap(card: Card) -> None:
    goto_key(card, "auth")
    assert verify(card, "1234") == b"\x90\x00"
    select_ef(card, "0017")
    assert tx(card, "802A00800301020300")[-2:] == b"\x90\x00"
    # Kept across EF selections and other commands.
    select_ef(card, "000A")
    tx(card, "00B0000004")
    select_ef(card, "0017")
    assert tx(card, "802A00800301020300")[-2:] == b"\x90\x00"
    # Cleared by selecting another AP and coming back.
    select_ap(card, "text")
    select_ap(card, "jpki")
    select_ef(card, "0017")
    assert tx(card, "802A00800301020300") == b"\x69\x82"
    # Cleared by re-selecting the same AP (OpenSC's logout).
    goto_key(card, "auth")
    verify(card, "1234")
    select_ap(card, "jpki")
    assert tx(card, "802A00970301020300") == b"\x69\x82"


@pytest.mark.parametrize("clear", ["reset", "power_off"])
def test_security_status_cleared_by_reset_and_power_off(card: Card, clear: str) -> None:
    goto_key(card, "auth")
    verify(card, "1234")
    getattr(card, clear)()
    card.power_on()
    assert card.current_ap is None
    select_ap(card, "jpki")
    assert tx(card, "802A00970301020300") == b"\x69\x82"
    assert card.tries_left("auth") == 3


def test_text_pin_does_not_cross_to_visual(card: Card) -> None:
    goto_key(card, "text")
    assert verify(card, "5678") == b"\x90\x00"
    select_ap(card, "visual")
    select_ef(card, "0002")
    assert tx(card, "00B0000000") == b"\x69\x82"


def test_change_reference_data_jpki(card: Card) -> None:
    goto_key(card, "auth")
    assert tx(card, "0024018004" + b"4321".hex()) == b"\x69\x82"  # not verified yet
    assert verify(card, "1234") == b"\x90\x00"
    assert tx(card, "0024018003" + b"432".hex()) == b"\x6a\x80"  # 4 digits only
    assert tx(card, "0024018004" + b"43a1".hex()) == b"\x6a\x80"
    assert tx(card, "0024008004" + b"4321".hex()) == b"\x6a\x86"
    assert tx(card, "0024018004" + b"4321".hex()) == b"\x90\x00"
    card.close()
    reloaded = Card.load(card.dir.path)
    goto_key(reloaded, "auth")
    assert verify(reloaded, "1234") == b"\x63\xc2"
    assert verify(reloaded, "4321") == b"\x90\x00"


def test_change_signing_password_format(card: Card) -> None:
    goto_key(card, "sign")
    assert verify(card, "ABC123") == b"\x90\x00"
    for bad in ("abc123", "ABC12", "ABCDEFGHIJ1234567", "ABC-123"):
        data = bad.encode()
        assert card.transmit(bytes((0, 0x24, 1, 0x80, len(data))) + data) == b"\x6a\x80", bad
    data = b"NEWPASS99"
    assert card.transmit(bytes((0, 0x24, 1, 0x80, len(data))) + data) == b"\x90\x00"
    select_ap(card, "jpki")
    select_ef(card, "001B")
    assert verify(card, "NEWPASS99") == b"\x90\x00"


@pytest.mark.parametrize("ap_key", ["juki", "common"])
def test_jicsap_change_key(card: Card, ap_key: str) -> None:
    goto_key(card, ap_key)
    assert tx(card, "8032008004" + b"1357".hex()) == b"\x69\x82"
    assert verify(card, "2468") == b"\x90\x00"
    assert tx(card, "0024018004" + b"1357".hex()) == b"\x6d\x00"  # ISO change is not this AP's
    assert tx(card, "8032008004" + b"1357".hex()) == b"\x90\x00"
    goto_key(card, ap_key)
    assert verify(card, "1357") == b"\x90\x00"
    # The two PINs were issued alike but are separate key references.
    other = "common" if ap_key == "juki" else "juki"
    goto_key(card, other)
    assert verify(card, "2468") == b"\x90\x00"


def test_check_numbers_cannot_be_changed(card: Card) -> None:
    values = right_values(card)
    goto_key(card, "text-a")
    assert verify(card, values["text-a"]) == b"\x90\x00"
    assert tx(card, "002401800C" + b"000000000000".hex()) == b"\x69\x85"


def test_admin_reset_pin_and_kiosk_rule(card: Card) -> None:
    goto_key(card, "auth")
    for _ in range(3):
        verify(card, "0000")
    assert card.tries_left("auth") == 3 - 3
    with pytest.raises(admin.AdminError, match="wrong"):
        admin.kiosk_reset(card, "auth", "1111", other_value="WRONG1")
    assert card.tries_left("sign") == 4  # presenting the other secret wrongly costs a try
    admin.kiosk_reset(card, "auth", "1111", other_value="ABC123")
    assert card.tries_left("auth") == 3 and card.tries_left("sign") == 5
    goto_key(card, "auth")
    assert verify(card, "1111") == b"\x90\x00"
    with pytest.raises(admin.AdminError, match="4 digits"):
        admin.reset_pin(card, "auth", "12")
    with pytest.raises(admin.AdminError, match="derived"):
        admin.reset_pin(card, "text-a", "123456789018")
    with pytest.raises(admin.AdminError, match="only the JPKI"):
        admin.kiosk_reset(card, "text", "1111", other_value="5678")
    admin.reset_pin(card, "sign", "ZZZ999")
    goto_key(card, "sign")
    assert verify(card, "ZZZ999") == b"\x90\x00"
