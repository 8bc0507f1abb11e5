"""Key references (PINs, password, check numbers) with retry counters that persist.

Every comparison of a secret is an *attempt* (docs/card-interface.md, "Anti-tearing"): the
attempt's decrement is made durable first, then the candidate is compared in constant time, and
a match then restores the full counter, durably, before it is reported. So no answer tells a
right value from a wrong one unless that attempt's decrement is already on disk: a full disk,
a read-only view, a failing fsync or a crash can refuse an attempt, never turn it into a free
guess. When a write fails the ring re-reads the state from disk, so memory and disk agree; until
it can, every state change and comparison is refused with ``StorageFailure``.
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
    """The state could not be written (or read back); the command must fail without comparing."""


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
        self.specs = specs
        self._limits = {name: spec.limit for name, spec in specs.items()}
        loaded = store.load(self._limits)
        self.keys: dict[str, ReferenceKey] = {
            name: ReferenceKey(spec, loaded[name]["value"], loaded[name]["tries_left"]) for name, spec in specs.items()
        }
        # Set when a write failed and the state could not be read back: memory may not be what
        # is on disk, so nothing may change or be compared until it is read again.
        self.stale: str | None = None

    def __getitem__(self, name: str) -> ReferenceKey:
        return self.keys[name]

    def _resync(self) -> None:
        """Adopt what is on disk (after a failed write); mark the ring stale if it cannot be read."""
        try:
            loaded = self.store.load(self._limits)
        except Exception as exc:  # StateError, or an OSError of the failing disk
            self.stale = str(exc)
            return
        for name, key in self.keys.items():
            key.tries_left = loaded[name]["tries_left"]
            key.value = loaded[name]["value"]
            key.digest = _sha256(key.value).digest() if key.value else b""
        self.stale = None

    def check_fresh(self) -> None:
        """Raise StorageFailure while memory may differ from disk (after a failed write)."""
        if self.stale is not None:
            self._resync()
            if self.stale is not None:
                raise StorageFailure(f"the state cannot be read back after a failed write: {self.stale}")

    def _commit(self, name: str, *, tries_left: int | None = None, value: bytes | None = None) -> None:
        """Write the state with one key changed, then change it in memory."""
        self.check_fresh()
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
            # The write may have failed before its rename (the old state stands) or after it (the
            # new one does, e.g. an EIO from the directory fsync): read back which, so that memory
            # and disk agree from the next command on.
            if not self.store.read_only:
                self._resync()
            raise StorageFailure(f"{self.store.path}: {exc.strerror or exc}") from None
        key.tries_left = new_tries
        if value is not None:
            key.value = new_value
            key.digest = _sha256(new_value).digest() if new_value else b""

    def attempt(self, name: str, candidate: bytes) -> Outcome:
        """Compare ``candidate`` as one attempt: decrement durably, compare, reset durably on a match.

        Raises StorageFailure (before comparing) when the decrement cannot be written, and after
        a match whose reset cannot be written; a blocked key is never compared.
        """
        key = self.keys[name]
        self.check_fresh()
        if key.tries_left == 0:
            return BLOCKED
        if self.store.read_only:
            raise StorageFailure("a read-only view of the card never compares secrets")
        self._commit(name, tries_left=key.tries_left - 1)
        if hmac.compare_digest(_sha256(candidate).digest(), key.digest) and key.digest:
            self._commit(name, tries_left=key.spec.limit)
            return MATCH
        return WRONG

    def change(self, name: str, new_value: bytes) -> None:
        """Set a new value (after a successful VERIFY); the caller has checked its format."""
        self._commit(name, value=new_value, tries_left=self.keys[name].spec.limit)

    # Operator commands (docs/card-interface.md, "Operator commands"), outside the APDU interface.
    def unblock(self, name: str) -> None:
        """Restore the full counter, keeping the value (the municipal office's unlock)."""
        self._commit(name, tries_left=self.keys[name].spec.limit)

    def set_tries(self, name: str, tries_left: int) -> None:
        """Set a key's tries left (scenario controls); ValueError outside 0..limit, never above the limit."""
        limit = self.keys[name].spec.limit
        if type(tries_left) is not int or not 0 <= tries_left <= limit:
            raise ValueError(f"tries for {name!r} must be an integer from 0 to {limit}, not {tries_left!r}")
        self._commit(name, tries_left=tries_left)

    def reset(self, name: str, new_value: bytes) -> None:
        """Set a new value and a full counter (the municipal office's re-initialisation)."""
        self._commit(name, value=new_value, tries_left=self.keys[name].spec.limit)

    def status(self) -> dict[str, dict]:
        """Tries left, limit and blocked flag per key; no values."""
        return {
            n: {"tries_left": k.tries_left, "limit": k.spec.limit, "blocked": k.blocked, "label": k.spec.label}
            for n, k in self.keys.items()
        }
