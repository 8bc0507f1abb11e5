"""A card with known values, for tests of reader software (and of mynaemu itself).

    from mynaemu.testing import TEST_SECRETS, issue_test_card
    issued = issue_test_card(tmp_path / "card")      # auth PIN 1234, signing password ABC123, ...

Every call issues a new card for the same fictitious holder, 山田　太郎, born 1980-02-17, My
Number 123456789018: its own card id, its own keys (from the installation's key pool, see
``mynaemu.keypool``) and its own certificates from the emulated CAs. Test cards are marked
``"kind": "test"`` in card.json, so ``mynaemu info --secrets`` shows their secrets.
``published_keys=True`` gives the card ``published_test_keys()`` instead: six fixed private keys
that ship with mynaemu (everyone has them), for tests that need the same keys on every run.
The pytest plugin (``mynaemu.pytest_plugin``, docs/testing.md) wraps all this in fixtures.
"""

from __future__ import annotations

import functools
import json
import random
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .profile import Profile

if TYPE_CHECKING:  # issuance pulls in Pillow and the PKI; the constants here do not need them
    from .content import CardKeys
    from .issuance import IssuedCard
    from .persona import Persona

TEST_SECRETS = {"auth": "1234", "sign": "ABC123", "text": "5678", "juki": "2468"}
TEST_MY_NUMBER = "123456789018"  # check digit 8 (docs/card-interface.md, D8)

# AIDs of the default profile, by application name, as hex.
AIDS = {name: ap.aid.hex().upper() for name, ap in Profile.load().aps.items()}


# What known_persona() passes to Persona.generate (with a fixed seed for everything else).
TEST_PERSONA = {"name": "山田\u3000太郎", "birth": date(1980, 2, 17), "sex": "1", "my_number": TEST_MY_NUMBER}


def known_persona(**changes: Any) -> Persona:
    """The fixed fictitious holder of the test card, with any of ``TEST_PERSONA``'s fields (or ``issued``) changed.

    Everything else (address, security code, serial) is drawn from a fixed seed, so the same
    changes give the same persona on every run.
    """
    from .persona import Persona

    unknown = sorted(set(changes) - {*TEST_PERSONA, "issued"})
    if unknown:
        raise TypeError(f"known_persona: unknown field(s) {', '.join(unknown)} (known: {', '.join(TEST_PERSONA)}, issued)")
    return Persona.generate(random.Random(7), **{**TEST_PERSONA, **changes})


@functools.cache
def _published_pems() -> dict[str, str]:
    doc = json.loads((resources.files("apdu_specs") / "published-test-keys.json").read_text(encoding="utf-8"))
    return doc["keys"]


def published_test_keys() -> CardKeys:
    """Six fixed RSA-2048 card keys that ship with mynaemu: public knowledge, for tests only."""
    from .content import CardKeys

    return CardKeys.from_pem_dict(_published_pems(), check=False)


def issue_test_card(card_dir: Path | str, *, published_keys: bool = False, **options: Any) -> IssuedCard:
    """Issue a test card for ``known_persona()`` with ``TEST_SECRETS``; options go to ``issue_card``.

    ``secrets`` given here are merged over ``TEST_SECRETS``; ``kind`` defaults to "test".
    """
    from .issuance import issue_card

    options.setdefault("persona", known_persona())
    options["secrets"] = {**TEST_SECRETS, **(options.get("secrets") or {})}
    options.setdefault("kind", "test")
    if published_keys:
        if options.get("keys") is not None:
            raise TypeError("issue_test_card: give keys= or published_keys=True, not both")
        options["keys"] = published_test_keys()
    return issue_card(card_dir, **options)
