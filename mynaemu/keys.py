"""Key references (PINs, password, check numbers) with retry counters that persist.

A key is compared in constant time. A wrong value costs a try, and that decrement reaches the
state file before the answer is returned (spec Part A.3): ``verify`` only returns after
``StateStore.save`` did. If the write fails, memory stays as it was and ``StorageFailure`` tells
the card to answer an error without revealing whether the value matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import Enum

from .profile import KeySpec
from .state import StateStore

_sha256 = hashlib.sha256

# Each format, and the rule it enforces, stated for error messages.
FORMAT_RULES: dict[str, tuple[re.Pattern[bytes], str]] = {
    "digits4": (re.compile(rb"[0-9]{4}"), "exactly 4 digits"),
    "digits6": (re.compile(rb"[0-9]{6}"), "exactly 6 digits"),
    "digits12": (re.compile(rb"[0-9]{12}"), "exactly 12 digits"),
    "digits14": (re.compile(rb"[0-9]{14}"), "exactly 14 digits"),
    "password": (re.compile(rb"[A-Z0-9]{6,16}"), "6 to 16 characters, upper-case A-Z and digits 0-9 only"),
    "any": (re.compile(rb".{1,255}", re.S), "1 to 255 bytes"),
}


def format_ok(fmt: str, value: bytes) -> bool:
    """Whether ``value`` has the key format ``fmt``."""
    return FORMAT_RULES[fmt][0].fullmatch(value) is not None


def format_rule(fmt: str) -> str:
    """The format's rule in words."""
    return FORMAT_RULES[fmt][1]


class Outcome(Enum):
    """What a VERIFY did."""

    MATCH = "match"
    WRONG = "wrong"
    BLOCKED = "blocked"


MATCH, WRONG, BLOCKED = Outcome.MATCH, Outcome.WRONG, Outcome.BLOCKED


class StorageFailure(Exception):
    """The state could not be written; the command must fail and nothing has changed."""


@dataclass(slots=True)
class ReferenceKey:
    """One key reference: its value (never logged), limit and tries left."""

    spec: KeySpec
    value: bytes
    tries_left: int
    # A digest of the value, compared instead of the value so that timing is the same for any
    # candidate of any length.
    digest: bytes = b""

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256(self.value).digest() if self.value else b""

    @property
    def blocked(self) -> bool:
        return self.tries_left == 0

    def __repr__(self) -> str:  # never show the value
        return f"ReferenceKey({self.spec.name!r}, tries_left={self.tries_left}/{self.spec.limit})"


class KeyRing:
    """All key references of one card, backed by its StateStore."""

    def __init__(self, specs: dict[str, KeySpec], store: StateStore) -> None:
        self.store = store
        loaded = store.load()
        missing = [n for n in specs if n not in loaded]
        if missing:
            raise ValueError(f"{store.path}: no state for key(s) {missing}")
        self.keys: dict[str, ReferenceKey] = {
            name: ReferenceKey(spec, loaded[name]["value"], loaded[name]["tries_left"]) for name, spec in specs.items()
        }

    def __getitem__(self, name: str) -> ReferenceKey:
        return self.keys[name]

    def _commit(self, name: str, *, tries_left: int | None = None, value: bytes | None = None) -> None:
        """Write the state with one key changed, then change it in memory."""
        key = self.keys[name]
        new_tries = key.tries_left if tries_left is None else tries_left
        new_value = key.value if value is None else value
        snapshot = {
            n: {"limit": k.spec.limit, "tries_left": k.tries_left, "value": k.value} for n, k in self.keys.items()
        }
        snapshot[name] = {"limit": key.spec.limit, "tries_left": new_tries, "value": new_value}
        try:
            self.store.save(snapshot)
        except OSError as exc:
            raise StorageFailure(f"{self.store.path}: {exc.strerror or exc}") from None
        key.tries_left = new_tries
        if value is not None:
            key.value = new_value
            key.digest = hashlib.sha256(new_value).digest() if new_value else b""

    def verify(self, name: str, candidate: bytes) -> Outcome:
        """Compare ``candidate``; a wrong one is durably counted before this returns."""
        key = self.keys[name]
        if key.tries_left == 0:
            return BLOCKED
        match = hmac.compare_digest(_sha256(candidate).digest(), key.digest) and bool(key.digest)
        if match:
            if key.tries_left != key.spec.limit:
                self._commit(name, tries_left=key.spec.limit)
            return MATCH
        self._commit(name, tries_left=key.tries_left - 1)
        return WRONG

    def change(self, name: str, new_value: bytes) -> None:
        """Set a new value (after a successful VERIFY); the caller has checked its format."""
        self._commit(name, value=new_value, tries_left=self.keys[name].spec.limit)

    # Operator commands (spec Part A.11), outside the APDU interface.
    def unblock(self, name: str) -> None:
        """Restore the full counter, keeping the value (the municipal office's unlock)."""
        self._commit(name, tries_left=self.keys[name].spec.limit)

    def reset(self, name: str, new_value: bytes) -> None:
        """Set a new value and a full counter (the municipal office's re-initialisation)."""
        self._commit(name, value=new_value, tries_left=self.keys[name].spec.limit)

    def status(self) -> dict[str, dict]:
        """Tries left, limit and blocked flag per key; no values."""
        return {
            n: {"tries_left": k.tries_left, "limit": k.spec.limit, "blocked": k.blocked, "label": k.spec.label}
            for n, k in self.keys.items()
        }
