"""Scenario controls: steer a card while it is used (tries, clock, certificates, presence, faults).

One API for every front end: Python (``CardControls`` methods), the JSON requests of the control
channel (``CardControls.handle``, used by ``mynaemu ctl``, ``serve --interactive`` and a trainer's
web console), and the CLI. The chip stays sans-I/O: key changes go through the card's operator
path (``Card.operating()``, durable ``KeyRing`` writes), the clock offset is stored in the card
directory (``mynaemu.cardclock``), and what needs a reader (remove/insert, faults) is reached
through two small protocols the bridge implements (``Presence``, ``FaultTarget``; see
``reader_bridge.steering``).

Certificate operations (hold, lift, revoke, reissue) belong to the authority service: it calls
``register_certificate_operations`` with an object of the ``CertificateOperations`` protocol. Until
one is registered, ``revoke`` is backed by ``mynaemu.revocation.suspend`` and the others answer
"not available: the authority service is not installed".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from . import admin
from .card import Card, CardClosedError
from .keys import StorageFailure
from .redact import mask_command, scrub
from .state import StateError
from .vocabulary import FAULT_KINDS

log = logging.getLogger("mynaemu.controls")

CERTIFICATE_OPERATIONS = ("hold", "lift", "revoke", "reissue")
MAX_APDUS_PER_REQUEST = 256
MAX_APDU_BYTES = 4 + 3 + 65535 + 3


class ControlError(Exception):
    """A refused control (bad request, a rule of the card); the message is one line."""

    kind = "refused"


class ControlFailure(ControlError):
    """A control that could not be carried out (storage, authority files, no reader)."""

    kind = "failed"


class NotAvailable(ControlFailure):
    """The control needs a part that is not installed or not attached (authority, reader)."""


# -- command patterns and fault specifications ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class CommandPattern:
    """A command prefix in hex with ``?`` nibble wildcards (``0020??80``), optionally masked bytewise."""

    text: str
    value: bytes
    mask: bytes

    @classmethod
    def parse(cls, text: object, mask: object = None) -> CommandPattern:
        """ControlError unless ``text`` is whole bytes of hex digits and ``?``; ``mask`` is hex, same length."""
        if not isinstance(text, str):
            raise ControlError("match must be a string of hex digits and ? wildcards (e.g. 0020??80)")
        cleaned = "".join(text.split()).upper()
        if not cleaned or len(cleaned) % 2 or any(c not in "0123456789ABCDEF?" for c in cleaned):
            raise ControlError("match must be whole bytes of hex digits and ? wildcards (e.g. 0020??80)")
        value = bytes.fromhex(cleaned.replace("?", "0"))
        nibbles = bytes.fromhex("".join("0" if c == "?" else "F" for c in cleaned))
        if mask is not None:
            if not isinstance(mask, str):
                raise ControlError("mask must be hex bytes, as long as match")
            try:
                extra = bytes.fromhex("".join(mask.split()))
            except ValueError:
                raise ControlError("mask must be hex bytes, as long as match") from None
            if len(extra) != len(value):
                raise ControlError(f"mask must be {len(value)} bytes, as long as match")
            nibbles = bytes(a & b for a, b in zip(nibbles, extra, strict=True))
        value = bytes(v & m for v, m in zip(value, nibbles, strict=True))
        return cls(cleaned, value, nibbles)

    def matches(self, apdu: bytes) -> bool:
        """Whether the command starts with the pattern."""
        if len(apdu) < len(self.value):
            return False
        return all(a & m == v for a, m, v in zip(apdu, self.mask, self.value, strict=False))


def _positive_int(request: dict, field: str, *, upper: int = 1 << 31) -> int | None:
    value = request.get(field)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= upper:
        raise ControlError(f"{field} must be a whole number from 1 to {upper}")
    return value


def _seconds(request: dict, field: str, *, upper: float) -> float | None:
    value = request.get(field)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= upper:
        raise ControlError(f"{field} must be a number of seconds from 0 to {upper:g}")
    return float(value)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault to inject between the reader and the card.

    kind ``remove``: the card leaves the reader when the command arrives (it is not answered,
    not executed). ``mute``: the command gets no answer; after ``seconds`` (None: until the
    faults are cleared or the card removed) the reader gives up and the card is reset, as a
    reader does with a mute card. ``error``: the command is answered 6F00 unexecuted, ``times``
    times (None: until cleared). ``slow``: every command (or every matching one) is answered
    ``seconds`` late, until cleared.
    It fires on the ``at_apdu``-th command counted from when it is set (1 = the next), or on a
    command that ``match`` matches; ``remove``, ``mute`` and ``error`` need one of them.
    """

    kind: str
    match: CommandPattern | None = None
    at_apdu: int | None = None
    seconds: float | None = None
    times: int | None = None

    @classmethod
    def from_request(cls, request: dict) -> FaultSpec:
        """Parse a fault request (the fields of ``describe``); ControlError for anything wrong."""
        kind = request.get("kind")
        if kind not in FAULT_KINDS:
            raise ControlError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        known = {"op", "kind", "match", "mask", "at_apdu", "seconds", "times"}
        unknown = sorted(set(request) - known)
        if unknown:
            raise ControlError(f"unknown fault field(s): {', '.join(map(str, unknown))[:80]}")
        match = None if request.get("match") is None else CommandPattern.parse(request["match"], request.get("mask"))
        if request.get("mask") is not None and match is None:
            raise ControlError("mask needs match")
        at_apdu = _positive_int(request, "at_apdu")
        if match is not None and at_apdu is not None:
            raise ControlError("give match or at_apdu, not both")
        seconds = _seconds(request, "seconds", upper=3600)
        times = _positive_int(request, "times")
        if kind == "slow":
            if seconds is None:
                raise ControlError("a slow fault needs seconds (the delay per command)")
            if at_apdu is not None or times is not None:
                raise ControlError("a slow fault takes match and seconds only")
        else:
            if match is None and at_apdu is None:
                raise ControlError(f"a {kind} fault needs match or at_apdu (which command it fires on)")
            if kind != "mute" and seconds is not None:
                raise ControlError(f"a {kind} fault takes no seconds")
            if kind != "error" and times is not None:
                raise ControlError(f"a {kind} fault fires once; times is for error faults")
        return cls(kind, match, at_apdu, seconds, times)

    def describe(self) -> dict[str, Any]:
        """The fault as a request (JSON-ready)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.match is not None:
            out["match"] = self.match.text
            if self.match.mask != bytes.fromhex("".join("0" if c == "?" else "F" for c in self.match.text)):
                out["mask"] = self.match.mask.hex().upper()
        for field in ("at_apdu", "seconds", "times"):
            if getattr(self, field) is not None:
                out[field] = getattr(self, field)
        return out


# -- what the bridge provides ------------------------------------------------------------------------
@runtime_checkable
class Presence(Protocol):
    """The card's place in a reader (``reader_bridge.steering.ReaderSlot``)."""

    @property
    def inserted(self) -> bool:
        """Whether the card is in the reader now."""
        ...

    def insert(self) -> None:
        """Put the card in the reader (no-op when it is in)."""
        ...

    def remove(self) -> None:
        """Take the card out of the reader (no-op when it is out)."""
        ...


@runtime_checkable
class FaultTarget(Protocol):
    """Where faults are injected (``reader_bridge.steering.FaultyCard``)."""

    def add_fault(self, spec: FaultSpec) -> None:
        """Arm one fault."""
        ...

    def clear_faults(self) -> int:
        """Disarm every fault (a muted command is let go); returns how many were armed."""
        ...

    def faults(self) -> list[dict[str, Any]]:
        """The armed faults, as requests."""
        ...


@runtime_checkable
class CertificateOperations(Protocol):
    """What the authority service offers on a card's certificates.

    Each method is called holding the card (``Card.operating()``, no APDU runs meanwhile) and
    returns JSON-ready facts for the caller (e.g. ``{"serials": [...], "status": "on hold"}``);
    it judges dates at ``card.now()`` and raises ControlError (refused) or ControlFailure
    (could not be done) with a one-line message.
    """

    def hold(self, card: Card) -> dict[str, Any]:
        """Put the card's JPKI certificates on hold (certificateHold)."""
        ...

    def lift(self, card: Card) -> dict[str, Any]:
        """Lift a hold."""
        ...

    def revoke(self, card: Card) -> dict[str, Any]:
        """Revoke the card's JPKI certificates for good."""
        ...

    def reissue(self, card: Card) -> dict[str, Any]:
        """Issue new JPKI certificates (and keys) onto the card."""
        ...


_certificate_operations: CertificateOperations | None = None
_registry_lock = threading.Lock()
_authority_probed = False


def register_certificate_operations(ops: CertificateOperations | None) -> None:
    """Install the authority service's certificate operations (None: back to the built-in ones)."""
    global _certificate_operations
    if ops is not None and not isinstance(ops, CertificateOperations):
        raise TypeError("certificate operations need hold, lift, revoke and reissue methods")
    with _registry_lock:
        _certificate_operations = ops


def certificate_operations() -> CertificateOperations:
    """The registered operations; importing ``mynaemu.authority`` (when installed) registers its own."""
    global _authority_probed
    with _registry_lock:
        probe = not _authority_probed and _certificate_operations is None
        _authority_probed = True
    if probe:
        # The authority service registers itself when imported; it is optional.
        with contextlib.suppress(ImportError):
            importlib.import_module("mynaemu.authority.hooks")
    with _registry_lock:
        return _certificate_operations or BUILTIN_CERTIFICATE_OPERATIONS


class BuiltinCertificateOperations:
    """Without the authority service: revoke is ``mynaemu.revocation.suspend``, the rest not available."""

    def _missing(self, op: str) -> ControlFailure:
        return NotAvailable(f"{op}: not available: the authority service is not installed (mynaemu.authority)")

    def hold(self, card: Card) -> dict[str, Any]:
        raise self._missing("hold")

    def lift(self, card: Card) -> dict[str, Any]:
        raise self._missing("lift")

    def revoke(self, card: Card) -> dict[str, Any]:
        return suspend_card(card)

    def reissue(self, card: Card) -> dict[str, Any]:
        raise self._missing("reissue")


BUILTIN_CERTIFICATE_OPERATIONS = BuiltinCertificateOperations()


def _check_issued_by(card: Card, authority) -> None:
    """Refuse a card whose certificates another authority signed (all emulated ones share names)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    der = card.dir.content.get("jpki.auth_cert", b"")
    try:
        x509.load_der_x509_certificate(der).verify_directly_issued_by(authority.auth_ca_certificate)  # type: ignore[arg-type]
    except (ValueError, TypeError, InvalidSignature):
        raise ControlFailure(f"{card.dir.path}: its auth certificate was not issued by the authority in "
                             f"{authority.directory}; run with the MYNAEMU_DATA_DIR the card was issued under "
                             "(nothing was changed)") from None


def suspend_card(card: Card, authority_dir: Path | str | None = None) -> dict[str, Any]:
    """Lost card: revoke its JPKI certificates on the emulated CRLs (``mynaemu.revocation``)."""
    from .pki import Authority, default_authority_dir
    from .revocation import suspend

    where = Path(authority_dir) if authority_dir is not None else default_authority_dir()
    if not (where / "authority.json").exists():
        raise ControlFailure(f"{where}: no emulated authority here; run with the MYNAEMU_DATA_DIR the card "
                             "was issued under")
    authority = Authority.load(where)
    _check_issued_by(card, authority)
    try:
        crls = suspend(card, authority)
    except StateError as exc:
        if "not issued by this authority" in str(exc):
            raise ControlFailure(f"{exc}; run with the MYNAEMU_DATA_DIR the card was issued under "
                                 "(nothing was changed)") from None
        raise
    except OSError as exc:
        raise ControlFailure(f"the suspension could not be written ({exc.strerror or exc}); run it again "
                             "when there is room (the card still answers as before)") from None
    return {"suspended": card.dir.meta.get("suspended"), "crls": {k: str(v) for k, v in crls.items()}}


# -- the controls of one card --------------------------------------------------------------------
def _certificates(card: Card) -> list[Any]:
    from cryptography import x509

    out = []
    for cid in ("jpki.auth_cert", "jpki.sign_cert"):
        der = card.dir.content.get(cid, b"")
        if isinstance(der, bytes) and len(der) > 4:
            out.append(x509.load_der_x509_certificate(der[: 4 + int.from_bytes(der[2:4], "big")]))
    return out


class CardControls:
    """The scenario controls of one card; ``presence`` and ``faults`` when it is in a reader.

    Every method holds the card as an operator command does, so no APDU runs meanwhile, and
    raises ControlError (refused: nothing changed) or ControlFailure (could not be done).
    """

    def __init__(self, card: Card, *, presence: Presence | None = None, faults: FaultTarget | None = None) -> None:
        self.card = card
        self.presence = presence
        self.faults = faults
        self.reader: str | None = None  # the PC/SC reader name, once a serve knows it

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except admin.AdminError as exc:
            raise ControlError(str(exc)) from None
        except StorageFailure as exc:
            raise ControlFailure(f"the card's state could not be written ({exc}); nothing was changed") from None
        except CardClosedError as exc:
            raise ControlFailure(str(exc)) from None

    # -- keys --------------------------------------------------------------------------------------
    def _key_name(self, key: object) -> str:
        if not isinstance(key, str) or key not in self.card.keyring.keys:
            shown = key if isinstance(key, str) and len(key) <= 20 else "that"
            raise ControlError(f"unknown key {shown!r}; keys are: {', '.join(self.card.keyring.keys)}")
        return key

    def set_tries(self, key: str, tries: int) -> int:
        """Set a key's tries left (0..limit; 0 blocks it); returns them."""
        key = self._key_name(key)
        with self._errors(), admin._operating(self.card) as keyring:
            try:
                keyring.set_tries(key, tries)
            except ValueError as exc:
                raise ControlError(str(exc)) from None
        return self.card.tries_left(key)

    def block(self, key: str) -> int:
        """Block a key (no tries left): VERIFY answers 6984."""
        return self.set_tries(key, 0)

    def unblock(self, key: str) -> int:
        """The municipal office's unlock: full counter, value kept."""
        key = self._key_name(key)
        with self._errors():
            admin.unblock(self.card, key)
        return self.card.tries_left(key)

    def reset_pin(self, key: str, new_value: str) -> int:
        """The municipal office's re-initialisation: new value, full counter."""
        key = self._key_name(key)
        with self._errors():
            admin.reset_pin(self.card, key, new_value)
        return self.card.tries_left(key)

    def kiosk_reset(self, key: str, new_value: str, other_value: str) -> int:
        """The kiosk: reset one JPKI secret by presenting the other (one attempt of the other)."""
        key = self._key_name(key)
        with self._errors():
            admin.kiosk_reset(self.card, key, new_value, other_value)
        return self.card.tries_left(key)

    # -- the clock ---------------------------------------------------------------------------------
    def set_clock_offset(self, seconds: int) -> int:
        """Move the card's clock to real time + ``seconds`` (durable); returns the offset."""
        with self._errors():
            try:
                self.card.set_clock_offset(seconds)
            except ValueError as exc:
                raise ControlError(str(exc)) from None
            except OSError as exc:
                raise ControlFailure(f"the clock offset could not be written ({exc.strerror or exc}); "
                                     "nothing was changed") from None
        return seconds

    def expire_certificates(self, margin: dt.timedelta = dt.timedelta(days=1)) -> int:
        """Move the card's clock ``margin`` past the last certificate's notAfter: all expired."""
        certs = _certificates(self.card)
        if not certs:
            raise ControlError("the card has no certificates")
        end = max(c.not_valid_after_utc for c in certs) + margin
        return self.set_clock_offset(math.ceil((end - dt.datetime.now(dt.UTC)).total_seconds()))

    def make_certificates_not_yet_valid(self, margin: dt.timedelta = dt.timedelta(days=1)) -> int:
        """Move the card's clock ``margin`` before the first certificate's notBefore."""
        certs = _certificates(self.card)
        if not certs:
            raise ControlError("the card has no certificates")
        start = min(c.not_valid_before_utc for c in certs) - margin
        return self.set_clock_offset(math.floor((start - dt.datetime.now(dt.UTC)).total_seconds()))

    # -- certificates ------------------------------------------------------------------------------
    def certificate_operation(self, op: str) -> dict[str, Any]:
        """hold, lift, revoke or reissue, by the registered ``CertificateOperations``."""
        if op not in CERTIFICATE_OPERATIONS:
            raise ControlError(f"certificate operations are {', '.join(CERTIFICATE_OPERATIONS)}")
        ops = certificate_operations()
        with self._errors(), self.card.operating():
            return dict(getattr(ops, op)(self.card) or {})

    def suspend(self, authority_dir: Path | str | None = None) -> dict[str, Any]:
        """``admin suspend``: the lost card's certificates revoked on the emulated CRLs."""
        with self._errors(), self.card.operating():
            return suspend_card(self.card, authority_dir)

    # -- the reader --------------------------------------------------------------------------------
    def _presence(self) -> Presence:
        if self.presence is None:
            raise NotAvailable("the card is not in a reader (serve it with `mynaemu serve`)")
        return self.presence

    def remove(self) -> None:
        """Take the card out of its reader: power and security status go, PC/SC sees it EMPTY."""
        self._presence().remove()

    def insert(self) -> None:
        """Put the card back into its reader (power-on state)."""
        self._presence().insert()

    def _faults(self) -> FaultTarget:
        if self.faults is None:
            raise NotAvailable("faults need the card in a reader (serve it with `mynaemu serve`)")
        return self.faults

    def add_fault(self, spec: FaultSpec) -> dict[str, Any]:
        """Arm a fault between the reader and the card (see ``FaultSpec``)."""
        self._faults().add_fault(spec)
        return spec.describe()

    def clear_faults(self) -> int:
        """Disarm every fault; returns how many were armed."""
        return self._faults().clear_faults()

    # -- commands ----------------------------------------------------------------------------------
    def transmit(self, apdus: list[bytes]) -> list[bytes]:
        """Send APDUs to the card in one go (no reader client runs between them), faults bypassed.

        The card's session is the reader's: this is one more client on the card, as a second
        program on the same reader would be. A card taken out of its reader refuses.
        """
        if self.presence is not None and not self.presence.inserted:
            raise ControlError("the card is not in the reader (removed); insert it first")
        with self._errors(), self.card.mutex:
            return [self.card.transmit(apdu) for apdu in apdus]

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything a console shows: keys, clock, presence, faults, suspension."""
        card = self.card
        with card.mutex:
            keys = card.key_status()
        return {
            "card_id": card.dir.card_id,
            "card_dir": str(card.dir.path),
            "inserted": None if self.presence is None else self.presence.inserted,
            "keys": keys,
            "clock_offset_seconds": int(card.clock_offset.total_seconds()),
            "card_time": card.now().replace(microsecond=0).isoformat(),
            "faults": [] if self.faults is None else self.faults.faults(),
            "suspended": card.dir.meta.get("suspended"),
            "reader": self.reader,
        }

    def recent(self, after: int = 0) -> dict[str, Any]:
        """The exchanges after sequence number ``after`` (masked, as ``FaultyCard``s that keep a
        log record them), the current AP and the verified keys: what an attached console shows."""
        log = getattr(self.faults, "log", None)
        records = [r for r in (log or ()) if r.seq > after]
        card = self.card
        with card.mutex:
            ap, verified = card.current_ap, sorted(card.session.verified)
        return {"apdus": [r.to_json(show_plain=False) for r in records], "ap": ap, "verified": verified,
                "count": getattr(self.faults, "count", 0)}

    # -- JSON requests -----------------------------------------------------------------------------
    def handle(self, request: object) -> dict[str, Any]:
        """Answer one request ``{"op": ...}`` with ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

        A refused or failed request changes nothing. Secret values of the request never appear
        in the answer or the log.
        """
        secrets: list[str] = []
        if isinstance(request, dict):
            secrets = [v for k, v in request.items() if k in SECRET_FIELDS and isinstance(v, str)]
        try:
            if not isinstance(request, dict):
                raise ControlError("a request is a JSON object with an op")
            op = request.get("op")
            handler = _OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ControlError(f"unknown op; ops are: {', '.join(sorted(_OPS))}")
            result = handler(self, request)
            log.info("control %s on card %s", op, self.card.dir.card_id)
            return {"ok": True, **result}
        except ControlError as exc:
            return {"ok": False, "error": scrub(" ".join(str(exc).split()), secrets), "kind": exc.kind}
        except StateError as exc:  # a file of the card or the authority that cannot be trusted
            return {"ok": False, "error": scrub(" ".join(str(exc).split()), secrets), "kind": "refused"}
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return {"ok": False, "error": scrub(f"{where}{exc.strerror or exc}", secrets), "kind": "failed"}
        except Exception as exc:  # a bug: still an answer, never a secret
            log.error("control request failed: %s", type(exc).__name__)
            return {"ok": False, "error": scrub(f"internal error ({type(exc).__name__}: {exc})", secrets),
                    "kind": "failed"}


# Request fields that hold secrets: scrubbed from every answer, never logged.
SECRET_FIELDS = frozenset({"new", "other"})


def _field(request: dict, name: str, kind: type, what: str) -> Any:
    value = request.get(name)
    if type(value) is not kind:
        raise ControlError(f"{request.get('op')}: {name} must be {what}")
    return value


def _op_status(c: CardControls, r: dict) -> dict:
    return c.status()


def _op_recent(c: CardControls, r: dict) -> dict:
    after = r.get("after", 0)
    if type(after) is not int or after < 0:
        raise ControlError("recent: after is a sequence number (an integer >= 0)")
    return c.recent(after)


def _keys_result(c: CardControls, key: str) -> dict:
    return {"key": key, "tries_left": c.card.tries_left(key), "limit": c.card.keyring[key].spec.limit}


def _op_set_tries(c: CardControls, r: dict) -> dict:
    key = _field(r, "key", str, "a key name")
    c.set_tries(key, _field(r, "tries", int, "a whole number"))
    return _keys_result(c, key)


def _op_block(c: CardControls, r: dict) -> dict:
    key = _field(r, "key", str, "a key name")
    c.block(key)
    return _keys_result(c, key)


def _op_unblock(c: CardControls, r: dict) -> dict:
    key = _field(r, "key", str, "a key name")
    c.unblock(key)
    return _keys_result(c, key)


def _op_reset_pin(c: CardControls, r: dict) -> dict:
    key = _field(r, "key", str, "a key name")
    c.reset_pin(key, _field(r, "new", str, "the new value as a string"))
    return _keys_result(c, key)


def _op_kiosk_reset(c: CardControls, r: dict) -> dict:
    key = _field(r, "key", str, "a key name")
    c.kiosk_reset(key, _field(r, "new", str, "the new value as a string"),
                  _field(r, "other", str, "the other secret as a string"))
    return _keys_result(c, key)


def _op_clock_offset(c: CardControls, r: dict) -> dict:
    given = [f for f in ("seconds", "shift", "expire", "not_yet_valid") if r.get(f) is not None and r.get(f) is not False]
    if len(given) != 1:
        raise ControlError("clock-offset: give one of seconds, shift, expire: true, not_yet_valid: true")
    if given[0] == "seconds":
        c.set_clock_offset(_field(r, "seconds", int, "a whole number of seconds"))
    elif given[0] == "shift":
        shift = _field(r, "shift", int, "a whole number of seconds")
        c.set_clock_offset(int(c.card.clock_offset.total_seconds()) + shift)
    elif given[0] == "expire":
        c.expire_certificates()
    else:
        c.make_certificates_not_yet_valid()
    return {"clock_offset_seconds": int(c.card.clock_offset.total_seconds()),
            "card_time": c.card.now().replace(microsecond=0).isoformat()}


def _op_certificates(op: str) -> Callable[[CardControls, dict], dict]:
    def run(c: CardControls, r: dict) -> dict:
        return {op: c.certificate_operation(op)}

    return run


def _op_suspend(c: CardControls, r: dict) -> dict:
    where = r.get("authority_dir")
    if where is not None and not isinstance(where, str):
        raise ControlError("suspend: authority_dir must be a path")
    return c.suspend(where)


def _op_remove(c: CardControls, r: dict) -> dict:
    c.remove()
    return {"inserted": False}


def _op_insert(c: CardControls, r: dict) -> dict:
    c.insert()
    return {"inserted": True}


def _op_fault(c: CardControls, r: dict) -> dict:
    return {"fault": c.add_fault(FaultSpec.from_request(r))}


def _op_clear_faults(c: CardControls, r: dict) -> dict:
    return {"cleared": c.clear_faults()}


def _op_transmit(c: CardControls, r: dict) -> dict:
    apdus = r.get("apdus")
    if not isinstance(apdus, list) or not 1 <= len(apdus) <= MAX_APDUS_PER_REQUEST:
        raise ControlError(f"transmit: apdus must be a list of 1 to {MAX_APDUS_PER_REQUEST} hex strings")
    commands = []
    for n, text in enumerate(apdus, 1):
        try:
            apdu = bytes.fromhex(text) if isinstance(text, str) else None
        except ValueError:
            apdu = None
        if apdu is None or not 4 <= len(apdu) <= MAX_APDU_BYTES:
            # Never echo it: it may be a VERIFY with a PIN.
            raise ControlError(f"transmit: APDU {n} is not an APDU in hex (4 to {MAX_APDU_BYTES} bytes)")
        commands.append(apdu)
    responses = c.transmit(commands)
    log.debug("control transmit: %s", ", ".join(mask_command(a) for a in commands))
    return {"responses": [resp.hex().upper() for resp in responses]}


_OPS: dict[str, Callable[[CardControls, dict], dict]] = {
    "status": _op_status,
    "recent": _op_recent,
    "set-tries": _op_set_tries,
    "block": _op_block,
    "unblock": _op_unblock,
    "reset-pin": _op_reset_pin,
    "kiosk-reset": _op_kiosk_reset,
    "clock-offset": _op_clock_offset,
    "suspend": _op_suspend,
    "remove": _op_remove,
    "insert": _op_insert,
    "fault": _op_fault,
    "clear-faults": _op_clear_faults,
    "transmit": _op_transmit,
    **{op: _op_certificates(op) for op in CERTIFICATE_OPERATIONS},
}
OPS = tuple(sorted(_OPS))
