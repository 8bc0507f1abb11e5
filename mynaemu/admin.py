"""Operator commands that real cards do at the municipal office or a kiosk (docs/card-interface.md, D11).

They have no published APDUs, so they act on the card's state directly, never through
``transmit``; each holds the card (``Card.operating``) so no APDU runs meanwhile. They need the
card's one writer: the process serving it, or a process that loaded it while nobody serves it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .card import Card, CardClosedError
from .keys import KeyRing, Outcome, format_ok, format_rule

# The kiosk rule: one JPKI secret may be reset only by presenting the other.
KIOSK_PARTNER = {"auth": "sign", "sign": "auth"}


class AdminError(ValueError):
    """A refused operator command; the message says the rule."""


@contextlib.contextmanager
def _operating(card: Card) -> Iterator[KeyRing]:
    """``card.operating()``; a closed card is an AdminError. A StorageFailure (the state could
    not be written: a runtime failure, not a refused request) goes to the caller as it is."""
    try:
        with card.operating() as keyring:
            yield keyring
    except CardClosedError as exc:
        raise AdminError(str(exc)) from None


def _key(card: Card, name: str):
    if name not in card.keyring.keys:
        raise AdminError(f"unknown key {name!r}; keys are: {', '.join(card.keyring.keys)}")
    return card.keyring[name]


def unblock(card: Card, name: str) -> None:
    """Municipal office: restore the full retry counter, keeping the value."""
    with _operating(card) as keyring:
        key = _key(card, name)
        if not key.value:
            raise AdminError(f"key {name!r} has no value on this card and stays blocked")
        keyring.unblock(name)


def reset_pin(card: Card, name: str, new_value: str) -> None:
    """Municipal office: set a new value and a full counter."""
    with _operating(card) as keyring:
        key = _key(card, name)
        if key.spec.value != "secret":
            raise AdminError(f"key {name!r} is derived from the card's data ({key.spec.value}) and cannot be set")
        data = _secret_bytes(new_value, "the new value")
        if not format_ok(key.spec.format, data):
            raise AdminError(f"the {key.spec.label} must be {format_rule(key.spec.format)}")
        keyring.reset(name, data)


def kiosk_reset(card: Card, name: str, new_value: str, other_value: str) -> None:
    """Convenience-store kiosk: reset one JPKI secret after verifying the other.

    The presented secret is one attempt, as a VERIFY is: its decrement is durable before it is
    compared (a storage failure refuses it uncompared), and a wrong one costs a try of that key.
    The new value's format is checked first, so a typo in it costs no try.
    """
    partner = KIOSK_PARTNER.get(name)
    if partner is None:
        raise AdminError("the kiosk resets only the JPKI secrets: auth or sign")
    with _operating(card) as keyring:
        spec = _key(card, name).spec
        if not format_ok(spec.format, _secret_bytes(new_value, "the new value")):
            raise AdminError(f"the {spec.label} must be {format_rule(spec.format)}")
        outcome = keyring.attempt(partner, _secret_bytes(other_value, f"the {partner} value"))
        if outcome is Outcome.BLOCKED:
            raise AdminError(f"the {partner} key is blocked too: only the municipal office can help")
        if outcome is Outcome.WRONG:
            left = keyring[partner].tries_left
            raise AdminError(f"the {partner} value presented is wrong ({left} tries left)")
        reset_pin(card, name, new_value)


def _secret_bytes(value: object, what: str) -> bytes:
    """A secret given as str, as the bytes the card compares (never quoted in errors)."""
    if not isinstance(value, str):
        raise AdminError(f"{what} must be a string, not {type(value).__name__}")
    return value.encode("ascii", "replace")
