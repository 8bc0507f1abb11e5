"""mynaemu: an emulator of the IC chip of Japan's My Number card (個人番号カード).

    from mynaemu import Card, issue_card
    issued = issue_card("card")              # persona, secrets, keys and certificates
    card = Card.load("card")
    atr = card.power_on()
    card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))   # -> b"\\x90\\x00"

The card is sans-I/O: bytes in, bytes out. Transports (PC/SC via vpcd, an in-process pyscard
connection) live in ``reader_bridge``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .card import Card
    from .issuance import IssuedCard, issue_card
    from .persona import Persona
    from .profile import Profile, ProfileError
    from .state import StateError

__all__ = ["Card", "IssuedCard", "Persona", "Profile", "ProfileError", "StateError", "issue_card"]
__version__ = "0.1.0"

# Imported on first use: `import mynaemu.cli` (every `mynaemu` command, `--help` too) must not pay
# for the card, its keys and its certificate tooling before it knows what it will run.
_LAZY = {"Card": "card", "IssuedCard": "issuance", "issue_card": "issuance", "Persona": "persona",
         "Profile": "profile", "ProfileError": "profile", "StateError": "state"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mynaemu' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
