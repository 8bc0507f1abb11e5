"""The card holder: a fictitious person and the rules that derive card values from them.

Rules implemented here (docs/card-interface.md, D7, D8; municipal pages for the expiry rule):
* My Number check digit (ordinance weights 2..7 from the right).
* Japanese-era YYMMDD, 照合番号B (check number B).
* Card and certificate expiry: the 10th (adults) or 5th (minors) birthday after issuance.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

__all__ = [
    "ADULT_AGE",
    "MAX_ADDRESS_CHARS",
    "MAX_NAME_CHARS",
    "SIGN_CERT_MIN_AGE",
    "Era",
    "Persona",
    "age_on",
    "birthday_in",
    "check_number_b",
    "expiry_dates",
    "is_valid_my_number",
    "japanese_era",
    "japanese_era_yymmdd",
    "my_number_check_digit",
    "nth_birthday_after",
    "to_fullwidth_digits",
]

IDEOGRAPHIC_SPACE = "\u3000"
# What fits the card: EF 0002 of the input-assist AP holds name and address in 512 bytes of UTF-8
# (3 bytes a kanji) beside birth date, sex and their TLV headers.
MAX_NAME_CHARS = 40  # family name, U+3000 and given name together; the kana reading likewise
MAX_ADDRESS_CHARS = 100
MEIJI_START = date(1868, 1, 25)  # 照合番号B writes the birth date in the Japanese era
# Age at issuance from which the card runs 10 birthdays (since the April 2022 change; 20 before).
ADULT_AGE = 18
# Below this age at issuance no signing certificate is issued (JPKI rule).
SIGN_CERT_MIN_AGE = 15


# -- My Number -------------------------------------------------------------------------------
def my_number_check_digit(first11: str) -> str:
    """Check digit of a My Number from its first 11 digits (D8).

    Counting n = 1..11 from the rightmost of the 11 digits, weight = n + 1 for n <= 6, else
    n - 5 (so 2..7, then 2..6); check = 11 - (sum mod 11), or 0 when the remainder is 0 or 1.
    """
    if not re.fullmatch(r"[0-9]{11}", first11):
        raise ValueError("a My Number check digit is computed from exactly 11 ASCII digits")
    total = 0
    for n, ch in enumerate(reversed(first11), start=1):
        total += int(ch) * (n + 1 if n <= 6 else n - 5)
    remainder = total % 11
    return "0" if remainder <= 1 else str(11 - remainder)


def is_valid_my_number(s: str) -> bool:
    """Whether `s` is 12 ASCII digits whose last digit is the check digit of the first 11."""
    return isinstance(s, str) and re.fullmatch(r"[0-9]{12}", s) is not None and my_number_check_digit(s[:11]) == s[11]


# -- Japanese eras -----------------------------------------------------------------------------
class Era(NamedTuple):
    """A Japanese era: its name, the digit JPKI certificates use for it, and its first day."""

    name: str
    jpki_code: int
    start: date


# Newest first. The JPKI era digits: 1 明治, 2 大正, 3 昭和, 4 平成, 5 令和.
ERAS: tuple[Era, ...] = (
    Era("令和", 5, date(2019, 5, 1)),
    Era("平成", 4, date(1989, 1, 8)),
    Era("昭和", 3, date(1926, 12, 25)),
    Era("大正", 2, date(1912, 7, 30)),
    Era("明治", 1, date(1868, 1, 25)),
)


def japanese_era(d: date) -> tuple[Era, int]:
    """The era `d` falls in and the year within it (元年 = 1)."""
    for era in ERAS:
        if d >= era.start:
            return era, d.year - era.start.year + 1
    raise ValueError(f"{d.isoformat()} is before the Meiji era (1868-01-25); no Japanese-era year exists")


def japanese_era_yymmdd(d: date) -> str:
    """`d` as YYMMDD with the year counted in its Japanese era (令和元年5月1日 -> '010501')."""
    _, year = japanese_era(d)
    return f"{year:02d}{d.month:02d}{d.day:02d}"


# -- dates -----------------------------------------------------------------------------------
def birthday_in(birth: date, year: int) -> date:
    """The holder's birthday in `year`; a 29 February birthday falls on 28 February in common years."""
    try:
        return birth.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def nth_birthday_after(birth: date, start: date, n: int) -> date:
    """The `n`-th birthday strictly after `start` (a birthday on `start` itself does not count)."""
    first_year = start.year if birthday_in(birth, start.year) > start else start.year + 1
    return birthday_in(birth, first_year + n - 1)


def age_on(birth: date, day: date) -> int:
    """Completed years of age on `day`."""
    return day.year - birth.year - (birthday_in(birth, day.year) > day)


def expiry_dates(birth: date, issued: date) -> tuple[date, date]:
    """(card expiry, certificate expiry) for a card issued on `issued`.

    The card runs to the 10th birthday after issuance when the holder is 18 or older on the day
    of issuance, to the 5th otherwise; the JPKI certificates run to the 5th birthday either way
    ("発行日から10回目の誕生日まで", municipal pages). A birthday on the issue date itself does
    not count, so a card issued the day before a birthday gets 9 years and a day.
    """
    if issued < birth:
        raise ValueError("a card cannot be issued before the holder's birth date")
    cert = nth_birthday_after(birth, issued, 5)
    card = nth_birthday_after(birth, issued, 10) if age_on(birth, issued) >= ADULT_AGE else cert
    return card, cert


def to_fullwidth_digits(s: str) -> str:
    """ASCII digits and hyphens as their full-width forms (addresses print block numbers so)."""
    return s.translate({**{0x30 + i: 0xFF10 + i for i in range(10)}, ord("-"): 0xFF0D})


# -- the persona -------------------------------------------------------------------------------
_SEXES = {"0": "unknown", "1": "male", "2": "female", "9": "not applicable"}  # ISO 5218 / JIS X 0303


def _check_text(label: str, value: object, max_chars: int) -> None:
    """A printable string the card can hold: no control characters, no lone surrogates, not too long."""
    if not isinstance(value, str):
        raise ValueError(f"the {label} must be a string, not {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"the {label} is {len(value)} characters; the card holds at most {max_chars}")
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            raise ValueError(f"the {label} holds a lone surrogate (U+{ord(ch):04X}); give valid Unicode text")
        if category == "Cc":
            raise ValueError(f"the {label} holds a control character (U+{ord(ch):04X}); give printable text")


def _digits(value: object, count: int) -> bool:
    # [0-9], not \d: \d also matches full-width and other Unicode digits.
    return isinstance(value, str) and re.fullmatch(f"[0-9]{{{count}}}", value) is not None


@dataclass(frozen=True)
class Persona:
    """The card holder. Names in kanji, kana in katakana; the address as printed on the card."""

    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    address: str
    birth: date
    sex: str
    # Secrets and identifiers stay out of repr(): a persona can end up in a log or a traceback.
    my_number: str = field(repr=False)
    security_code: str = field(repr=False)
    municipality_code: str
    juminhyo_code: str = field(repr=False)
    issued: date
    card_expiry: date
    cert_expiry: date
    card_serial: str

    def __post_init__(self) -> None:
        for label, value in (("family name", self.family_name), ("given name", self.given_name)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"the {label} must be a non-empty string")
            _check_text(label, value, MAX_NAME_CHARS)
            if IDEOGRAPHIC_SPACE in value:
                raise ValueError(f"the {label} must not contain the ideographic space U+3000 (it separates the two)")
        for label, value in (
            ("family name kana", self.family_name_kana),
            ("given name kana", self.given_name_kana),
        ):
            if not isinstance(value, str) or IDEOGRAPHIC_SPACE in value:
                raise ValueError(f"the {label} must be a string without U+3000 (empty when unknown)")
        if not isinstance(self.address, str) or not self.address.strip():
            raise ValueError("the address must be a non-empty string")
        _check_text("name", self.name, MAX_NAME_CHARS)
        _check_text("kana name", self.name_kana, MAX_NAME_CHARS)
        _check_text("address", self.address, MAX_ADDRESS_CHARS)
        if not isinstance(self.sex, str) or self.sex not in _SEXES:
            raise ValueError("sex must be '1' (male), '2' (female), '9' (not applicable) or '0' (unknown)")
        if not is_valid_my_number(self.my_number):
            raise ValueError(
                "a My Number is 12 ASCII digits whose last digit is the check digit of the first 11 "
                "(weights 2..7 from the right; check = 11 - sum mod 11, 0 when the remainder is 0 or 1)"
            )
        for label, value, count in (
            ("security code", self.security_code, 4),
            ("municipality code", self.municipality_code, 5),
            ("juminhyo code", self.juminhyo_code, 11),
            ("card serial", self.card_serial, 15),
        ):
            if not _digits(value, count):
                raise ValueError(f"the {label} must be exactly {count} ASCII digits")
        for label, value in (
            ("birth", self.birth),
            ("issued", self.issued),
            ("card_expiry", self.card_expiry),
            ("cert_expiry", self.cert_expiry),
        ):
            if type(value) is not date:  # a datetime is a date too, but does not compare with one
                raise ValueError(f"{label} must be a datetime.date, not {type(value).__name__}")
        if self.birth < MEIJI_START:
            raise ValueError(f"the birth date must be from {MEIJI_START} (the Meiji era): the card writes it in the era")
        if not self.birth <= self.issued < self.cert_expiry <= self.card_expiry:
            raise ValueError("dates must satisfy birth <= issued < cert_expiry <= card_expiry")

    @property
    def name(self) -> str:
        """Family and given name separated by U+3000, as the card stores it."""
        return f"{self.family_name}{IDEOGRAPHIC_SPACE}{self.given_name}"

    @property
    def name_kana(self) -> str:
        """Kana reading, family and given separated by U+3000."""
        return f"{self.family_name_kana}{IDEOGRAPHIC_SPACE}{self.given_name_kana}"

    @property
    def age_at_issuance(self) -> int:
        """Completed years of age on the day of issuance."""
        return age_on(self.birth, self.issued)

    @property
    def has_sign_certificate(self) -> bool:
        """Whether the card carries a signing certificate (not for holders under 15 at issuance)."""
        return self.age_at_issuance >= SIGN_CERT_MIN_AGE

    @classmethod
    def generate(
        cls,
        rng: random.Random | None = None,
        *,
        name: str | None = None,
        birth: date | None = None,
        sex: str | None = None,
        my_number: str | None = None,
        issued: date | None = None,
    ) -> Persona:
        """A fictitious persona; every value not given is drawn from `rng`.

        `name` is "family<U+3000>given"; its kana is taken from the built-in lists when the name
        is one of theirs and left empty otherwise. `issued` defaults to today. Without `rng` the
        draw uses the system's CSPRNG, since the security code is a secret.
        """
        for label, value, kind in (("name", name, str), ("sex", sex, str), ("my_number", my_number, str),
                                   ("birth", birth, date), ("issued", issued, date)):
            if value is not None and type(value) is not kind:
                raise ValueError(f"{label} must be a {kind.__name__} (or None for a random one), not {type(value).__name__}")
        if rng is not None and not isinstance(rng, random.Random):
            raise ValueError(f"rng must be a random.Random, not {type(rng).__name__}")
        rng = rng if rng is not None else random.SystemRandom()
        if birth is not None and not MEIJI_START <= birth <= (issued or date.today()):
            raise ValueError(f"the birth date {birth} must be from {MEIJI_START} (the Meiji era) to the day of issuance")
        if sex is None:
            sex = rng.choice("12")
        if issued is None:
            issued = date.today()
        if birth is None:
            # 20 to 79 years old on the day of issuance.
            start = birthday_in(issued, issued.year - 80)
            end = birthday_in(issued, issued.year - 20)
            birth = date.fromordinal(rng.randint(start.toordinal() + 1, end.toordinal()))
        if name is None:
            family, family_kana = rng.choice(_FAMILY_NAMES)
            pool = _MALE_NAMES if sex == "1" else _FEMALE_NAMES if sex == "2" else _MALE_NAMES + _FEMALE_NAMES
            given, given_kana = rng.choice(pool)
        else:
            family, sep, given = name.partition(IDEOGRAPHIC_SPACE)
            if not sep or not family or not given:
                raise ValueError(
                    "a name given as one string must be family name, the ideographic space U+3000, "
                    "then given name (e.g. '山田\u3000太郎')"
                )
            family_kana = dict(_FAMILY_NAMES).get(family, "")
            given_kana = dict(_MALE_NAMES + _FEMALE_NAMES).get(given, "")
        if my_number is None:
            first11 = "".join(rng.choice("0123456789") for _ in range(11))
            my_number = first11 + my_number_check_digit(first11)
        town, municipality = rng.choice(_ADDRESSES)
        block = to_fullwidth_digits(f"{rng.randint(1, 9)}丁目{rng.randint(1, 30)}番{rng.randint(1, 20)}号")
        card_expiry, cert_expiry = expiry_dates(birth, issued)
        return cls(
            family_name=family,
            given_name=given,
            family_name_kana=family_kana,
            given_name_kana=given_kana,
            address=town + block,
            birth=birth,
            sex=sex,
            my_number=my_number,
            security_code=_random_digits(rng, 4),
            municipality_code=municipality,
            juminhyo_code=_random_digits(rng, 11),
            issued=issued,
            card_expiry=card_expiry,
            cert_expiry=cert_expiry,
            # A leading 9 marks the serial as an emulated card's, as the "9xxxxxx" key IDs do.
            card_serial="9" + _random_digits(rng, 14),
        )


def check_number_b(persona: Persona, japanese_era: bool = True) -> str:
    """照合番号B: birth YYMMDD (era year, or Gregorian), card expiry year, security code: 14 digits."""
    birth = japanese_era_yymmdd(persona.birth) if japanese_era else persona.birth.strftime("%y%m%d")
    return f"{birth}{persona.card_expiry.year:04d}{persona.security_code}"


def _random_digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


# Common family and given names with their katakana readings.
_FAMILY_NAMES: tuple[tuple[str, str], ...] = (
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("高橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
    ("渡辺", "ワタナベ"),
    ("山本", "ヤマモト"),
    ("中村", "ナカムラ"),
    ("小林", "コバヤシ"),
    ("加藤", "カトウ"),
    ("山田", "ヤマダ"),
)
_MALE_NAMES: tuple[tuple[str, str], ...] = (
    ("太郎", "タロウ"),
    ("翔太", "ショウタ"),
    ("大輔", "ダイスケ"),
    ("健一", "ケンイチ"),
    ("浩", "ヒロシ"),
    ("誠", "マコト"),
    ("拓也", "タクヤ"),
)
_FEMALE_NAMES: tuple[tuple[str, str], ...] = (
    ("花子", "ハナコ"),
    ("陽子", "ヨウコ"),
    ("美咲", "ミサキ"),
    ("直美", "ナオミ"),
    ("恵子", "ケイコ"),
    ("優子", "ユウコ"),
    ("愛", "アイ"),
)
# Real municipalities (so the 5-digit 全国地方公共団体コード, without its check digit, is right)
# with town names that say they are samples or fictitious: 見本 "sample", 架空 "fictitious",
# 試験 "test".
_ADDRESSES: tuple[tuple[str, str], ...] = (
    ("東京都千代田区見本町", "13101"),
    ("北海道札幌市中央区架空町", "01101"),
    ("宮城県仙台市青葉区試験町", "04101"),
    ("神奈川県横浜市中区見本町", "14104"),
    ("愛知県名古屋市中区架空町", "23106"),
    ("京都府京都市中京区試験町", "26104"),
    ("大阪府大阪市北区見本町", "27127"),
    ("福岡県福岡市中央区架空町", "40133"),
)
