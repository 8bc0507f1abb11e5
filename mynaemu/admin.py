"""Operator commands that real cards do at the municipal office or a kiosk (spec Part A.11).

They have no published APDUs, so they act on the card's state directly, never through
``transmit``. Run them while the card is not being served: a serving process keeps its own copy
of the counters in memory.
"""

from __future__ import annotations

from .card import Card
from .keys import Outcome, format_ok, format_rule

# The kiosk rule: one JPKI secret may be reset only by presenting the other.
KIOSK_PARTNER = {"auth": "sign", "sign": "auth"}


class AdminError(ValueError):
    """A refused operator command; the message says the rule."""


def _key(card: Card, name: str):
    if name not in card.keyring.keys:
        raise AdminError(f"unknown key {name!r}; keys are: {', '.join(card.keyring.keys)}")
    return card.keyring[name]


def unblock(card: Card, name: str) -> None:
    """Municipal office: restore the full retry counter, keeping the value."""
    key = _key(card, name)
    if not key.value:
        raise AdminError(f"key {name!r} has no value on this card and stays blocked")
    card.keyring.unblock(name)


def reset_pin(card: Card, name: str, new_value: str) -> None:
    """Municipal office: set a new value and a full counter."""
    key = _key(card, name)
    if key.spec.value != "secret":
        raise AdminError(f"key {name!r} is derived from the card's data ({key.spec.value}) and cannot be set")
    data = new_value.encode("ascii", "replace")
    if not format_ok(key.spec.format, data):
        raise AdminError(f"the {key.spec.label} must be {format_rule(key.spec.format)}")
    card.keyring.reset(name, data)


def kiosk_reset(card: Card, name: str, new_value: str, other_value: str) -> None:
    """Convenience-store kiosk: reset one JPKI secret after verifying the other.

    The presented secret is checked like a VERIFY: a wrong one costs a try of that key.
    """
    partner = KIOSK_PARTNER.get(name)
    if partner is None:
        raise AdminError("the kiosk resets only the JPKI secrets: auth or sign")
    outcome = card.keyring.verify(partner, other_value.encode("ascii", "replace"))
    if outcome is Outcome.BLOCKED:
        raise AdminError(f"the {partner} key is blocked too: only the municipal office can help")
    if outcome is Outcome.WRONG:
        left = card.keyring[partner].tries_left
        raise AdminError(f"the {partner} value presented is wrong ({left} tries left)")
    reset_pin(card, name, new_value)
