"""A card with known values, for tests of reader software (and of mynaemu itself).

    from mynaemu.testing import TEST_SECRETS, issue_test_card
    issued = issue_test_card(tmp_path / "card")      # auth PIN 1234, signing password ABC123, ...

Every call issues a new card (new keys) for the same fictitious holder, 山田　太郎, born
1980-02-17, My Number 123456789018.
"""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from .profile import Profile

if TYPE_CHECKING:  # issuance pulls in Pillow and the PKI; the constants here do not need them
    from .issuance import IssuedCard
    from .persona import Persona

TEST_SECRETS = {"auth": "1234", "sign": "ABC123", "text": "5678", "juki": "2468"}
TEST_MY_NUMBER = "123456789018"  # check digit 8 (spec Part A.8)

# AIDs of the default profile, by application name, as hex.
AIDS = {name: ap.aid.hex().upper() for name, ap in Profile.load().aps.items()}


def known_persona() -> Persona:
    """The fixed fictitious holder of the test card."""
    from .persona import Persona

    return Persona.generate(
        random.Random(7), name="山田\u3000太郎", birth=date(1980, 2, 17), sex="1", my_number=TEST_MY_NUMBER
    )


def issue_test_card(card_dir: Path | str, **options) -> IssuedCard:
    """Issue a card for ``known_persona()`` with ``TEST_SECRETS``; options go to ``issue_card``."""
    from .issuance import issue_card

    options.setdefault("persona", known_persona())
    options.setdefault("secrets", dict(TEST_SECRETS))
    return issue_card(card_dir, **options)
