"""Persona rules: My Number check digit, Japanese eras, 照合番号B, expiry dates, validation."""

from __future__ import annotations

import dataclasses
import random
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mynaemu.persona import (
    ERAS,
    Persona,
    age_on,
    check_number_b,
    expiry_dates,
    is_valid_my_number,
    japanese_era,
    japanese_era_yymmdd,
    my_number_check_digit,
    nth_birthday_after,
    to_fullwidth_digits,
)

# -- My Number check digit -------------------------------------------------------------------
# Weights, counting n = 1..11 from the rightmost of the first 11 digits: n+1 for n <= 6, n-5
# after, i.e. 2 3 4 5 6 7 2 3 4 5 6. Each vector below is worked by hand.
#
# "12345678901": digits from the right 1 0 9 8 7 6 5 4 3 2 1
#   1*2 + 0*3 + 9*4 + 8*5 + 7*6 + 6*7 + 5*2 + 4*3 + 3*4 + 2*5 + 1*6
#   = 2 + 0 + 36 + 40 + 42 + 42 + 10 + 12 + 12 + 10 + 6 = 212; 212 mod 11 = 3; 11 - 3 = 8.
# "53768667718" (the J-LIS test card read by MCARD, whose 12th digit is 8): from the right
#   8 1 7 7 6 6 8 6 7 3 5 -> 16 + 3 + 28 + 35 + 36 + 42 + 16 + 18 + 28 + 15 + 30 = 267;
#   267 mod 11 = 3; 11 - 3 = 8.
# "01234567890" (the TEX2E trace's placeholder "012345678901"): from the right
#   0 9 8 7 6 5 4 3 2 1 0 -> 0 + 27 + 32 + 35 + 36 + 35 + 8 + 9 + 8 + 5 + 0 = 195;
#   195 mod 11 = 8; 11 - 8 = 3, so the trace's number (check 1) is not a valid one.
# "00000000000": sum 0, remainder 0 -> 0.
# "00000000006": 6*2 = 12, remainder 1 -> 0 (the other "0" case).
# "00000000001": 1*2 = 2, remainder 2 -> 9.
# "10000000000": the leftmost digit has n = 11, weight 6: 6 mod 11 = 6 -> 5.
# "00001000000": the 1 is 7th from the right, weight 2 (the cycle restarts): 2 -> 9.
CHECK_DIGIT_VECTORS = [
    ("12345678901", "8"),
    ("53768667718", "8"),
    ("01234567890", "3"),
    ("00000000000", "0"),
    ("00000000006", "0"),
    ("00000000001", "9"),
    ("10000000000", "5"),
    ("00001000000", "9"),
]


@pytest.mark.parametrize(("first11", "check"), CHECK_DIGIT_VECTORS)
def test_check_digit_vectors(first11: str, check: str) -> None:
    assert my_number_check_digit(first11) == check
    assert is_valid_my_number(first11 + check)


def test_invalid_numbers() -> None:
    assert not is_valid_my_number("012345678901")  # TEX2E's placeholder: check should be 3
    assert not is_valid_my_number("12345678901")  # 11 digits
    assert not is_valid_my_number("１２３４５６７８９０１８")  # full-width digits are not ASCII
    assert not is_valid_my_number("1234567890a8")
    with pytest.raises(ValueError, match="11 ASCII digits"):
        my_number_check_digit("123")


@given(st.text(alphabet="0123456789", min_size=11, max_size=11), st.integers(0, 9))
def test_only_the_check_digit_completes_a_number(first11: str, last: int) -> None:
    expected = my_number_check_digit(first11)
    assert is_valid_my_number(first11 + str(last)) == (str(last) == expected)


# -- eras ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2019, 5, 1), "010501"),  # 令和元年
        (date(2019, 4, 30), "310430"),  # 平成31年, its last day
        (date(1989, 1, 8), "010108"),  # 平成元年
        (date(1989, 1, 7), "640107"),  # 昭和64年, its last day
        (date(1926, 12, 25), "011225"),  # 昭和元年
        (date(1926, 12, 24), "151224"),  # 大正15年
        (date(1912, 7, 30), "010730"),  # 大正元年
        (date(1912, 7, 29), "450729"),  # 明治45年
        (date(1980, 2, 17), "550217"),  # 昭和55年 (MCARD's card)
        (date(2020, 2, 24), "020224"),  # 令和2年 (docs/card-interface.md §3.1 example)
    ],
)
def test_era_boundaries(day: date, expected: str) -> None:
    assert japanese_era_yymmdd(day) == expected


def test_era_before_meiji_refused() -> None:
    with pytest.raises(ValueError, match="before the Meiji era"):
        japanese_era(date(1868, 1, 24))


@given(st.dates(min_value=date(1868, 1, 25), max_value=date(2099, 12, 31)))
def test_era_year_counts_from_the_era_start(day: date) -> None:
    era, year = japanese_era(day)
    assert era.start <= day
    assert era.start.year + year - 1 == day.year
    newer = [e for e in ERAS if e.start > era.start]
    assert all(day < e.start for e in newer)


# -- 照合番号B -------------------------------------------------------------------------------
def _persona(**changes: object) -> Persona:
    base = Persona(
        family_name="黒桐",
        given_name="幹也",
        family_name_kana="コクトウ",
        given_name_kana="ミキヤ",
        address="東京都清瀬市見本町１２－７－２０２",
        birth=date(1980, 2, 17),
        sex="1",
        my_number="537686677188",
        security_code="2285",
        municipality_code="13221",
        juminhyo_code="12345678901",
        issued=date(2025, 3, 1),
        card_expiry=date(2035, 2, 17),
        cert_expiry=date(2030, 2, 17),
        card_serial="400000012719843",
    )
    return dataclasses.replace(base, **changes)


def test_check_number_b() -> None:
    # MCARD data.rs, confirmed on a card: 1980-02-17 (昭和55), expiry 2035, code 2285.
    p = _persona()
    assert check_number_b(p) == "55021720352285"
    assert check_number_b(p, japanese_era=False) == "80021720352285"


# -- expiry ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("birth", "issued", "card", "cert"),
    [
        # Adult, birthday later in the year of issuance: that birthday is the 1st.
        (date(1990, 6, 15), date(2024, 5, 1), date(2033, 6, 15), date(2028, 6, 15)),
        # Adult, birthday earlier in the year: the 1st is next year's.
        (date(1990, 3, 1), date(2024, 5, 1), date(2034, 3, 1), date(2029, 3, 1)),
        # Issued on the birthday: that day does not count, so a full 10 years.
        (date(1990, 5, 1), date(2024, 5, 1), date(2034, 5, 1), date(2029, 5, 1)),
        # 18 on the day of issuance: adult.
        (date(2006, 5, 1), date(2024, 5, 1), date(2034, 5, 1), date(2029, 5, 1)),
        # 17 (18 tomorrow): minor, the card ends with the certificates on the 5th birthday.
        (date(2006, 5, 2), date(2024, 5, 1), date(2028, 5, 2), date(2028, 5, 2)),
        # Child.
        (date(2015, 8, 20), date(2024, 5, 1), date(2028, 8, 20), date(2028, 8, 20)),
        # 29 February: the 4th birthday (2028) is a real 29 Feb, the 5th falls on 28 Feb 2029.
        (date(2000, 2, 29), date(2024, 3, 1), date(2034, 2, 28), date(2029, 2, 28)),
        # 29 February, 5th birthday in a leap year: 2024-02-29 is the 1st, 2028-02-29 the 5th.
        (date(2000, 2, 29), date(2023, 3, 1), date(2033, 2, 28), date(2028, 2, 29)),
    ],
)
def test_expiry_dates(birth: date, issued: date, card: date, cert: date) -> None:
    assert expiry_dates(birth, issued) == (card, cert)


def test_expiry_before_birth_refused() -> None:
    with pytest.raises(ValueError, match="before the holder's birth"):
        expiry_dates(date(2024, 1, 2), date(2024, 1, 1))


@given(
    st.dates(min_value=date(1920, 1, 1), max_value=date(2030, 12, 31)),
    st.integers(min_value=0, max_value=40000),
)
def test_expiry_properties(birth: date, days: int) -> None:
    issued = birth + timedelta(days=days)
    card, cert = expiry_dates(birth, issued)
    assert issued < cert <= card
    assert cert == nth_birthday_after(birth, issued, 5)
    assert (card.month, card.day) in ((birth.month, birth.day), (2, 28))
    # Between 4 and 5 years for the certificates; 9 to 10 years for adults.
    assert 4 * 365 < (cert - issued).days <= 5 * 366
    if age_on(birth, issued) >= 18:
        assert 9 * 365 < (card - issued).days <= 10 * 366


# -- the persona -------------------------------------------------------------------------------
def test_generate_is_reproducible_and_valid() -> None:
    a = Persona.generate(random.Random(42), issued=date(2025, 1, 10))
    b = Persona.generate(random.Random(42), issued=date(2025, 1, 10))
    assert a == b
    assert is_valid_my_number(a.my_number)
    assert a.name == f"{a.family_name}\u3000{a.given_name}"
    assert a.name_kana == f"{a.family_name_kana}\u3000{a.given_name_kana}"
    assert (a.card_expiry, a.cert_expiry) == expiry_dates(a.birth, a.issued)
    assert 20 <= a.age_at_issuance <= 79


@pytest.mark.parametrize("seed", range(20))
def test_generated_values(seed: int) -> None:
    p = Persona.generate(random.Random(seed), issued=date(2024, 6, 1))
    assert p.sex in ("1", "2")
    assert len(p.card_serial) == 15 and p.card_serial.startswith("9")
    assert len(p.security_code) == 4 and p.security_code.isdigit()
    assert len(p.juminhyo_code) == 11
    # The municipality code is the address's (table of real municipalities, fictitious towns).
    expected = {
        "東京都千代田区": "13101",
        "北海道札幌市中央区": "01101",
        "宮城県仙台市青葉区": "04101",
        "神奈川県横浜市中区": "14104",
        "愛知県名古屋市中区": "23106",
        "京都府京都市中京区": "26104",
        "大阪府大阪市北区": "27127",
        "福岡県福岡市中央区": "40133",
    }
    assert [code for prefix, code in expected.items() if p.address.startswith(prefix)] == [p.municipality_code]
    # Block numbers in full-width digits, no ASCII digit anywhere in the address.
    assert any("０" <= ch <= "９" for ch in p.address)
    assert not any("0" <= ch <= "9" for ch in p.address)


def test_generate_with_given_values() -> None:
    p = Persona.generate(
        random.Random(1),
        name="山田\u3000花子",
        birth=date(2000, 2, 29),
        sex="2",
        my_number="123456789018",
        issued=date(2024, 3, 1),
    )
    assert (p.family_name, p.given_name) == ("山田", "花子")
    assert (p.family_name_kana, p.given_name_kana) == ("ヤマダ", "ハナコ")  # from the built-in lists
    assert p.my_number == "123456789018"
    assert p.cert_expiry == date(2029, 2, 28)
    unknown = Persona.generate(random.Random(1), name="勅使河原\u3000蒼", issued=date(2024, 3, 1))
    assert unknown.name_kana == "\u3000"  # kana unknown: left empty for the caller to set


def test_invalid_my_number_refused_with_the_rule() -> None:
    with pytest.raises(ValueError, match="check digit") as info:
        Persona.generate(random.Random(1), my_number="123456789012")
    assert "123456789012" not in str(info.value)  # the value itself is never echoed


def test_name_needs_the_ideographic_space() -> None:
    with pytest.raises(ValueError, match="U\\+3000"):
        Persona.generate(random.Random(1), name="山田 太郎")  # ASCII space
    with pytest.raises(ValueError, match="U\\+3000"):
        Persona.generate(random.Random(1), name="山田太郎")
    with pytest.raises(ValueError, match="U\\+3000"):
        _persona(family_name="山\u3000田")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sex": "3"}, "sex"),
        ({"security_code": "123"}, "security code"),
        ({"security_code": "１２３４"}, "security code"),
        ({"municipality_code": "1310"}, "municipality"),
        ({"juminhyo_code": "1"}, "juminhyo"),
        ({"card_serial": "40000001271984"}, "card serial"),
        ({"address": " "}, "address"),
        ({"cert_expiry": date(2036, 1, 1)}, "dates must satisfy"),
        ({"issued": date(1979, 1, 1)}, "dates must satisfy"),
    ],
)
def test_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _persona(**changes)


def test_repr_hides_secrets() -> None:
    text = repr(_persona())
    assert "537686677188" not in text
    assert "2285" not in text
    assert "黒桐" in text


def test_fullwidth_digits() -> None:
    assert to_fullwidth_digits("1丁目23-4") == "１丁目２３－４"
