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

from .card import Card
from .profile import Profile, ProfileError
from .state import StateError

__all__ = ["Card", "IssuedCard", "Persona", "Profile", "ProfileError", "StateError", "issue_card"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Issuance pulls in image and certificate tooling; a served card does not need it.
    if name in ("issue_card", "IssuedCard"):
        from . import issuance

        return getattr(issuance, name)
    if name == "Persona":
        from .persona import Persona

        return Persona
    raise AttributeError(name)
