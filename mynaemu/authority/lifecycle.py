"""The certificates' lifecycle: hold, lift, revoke, reissue, expiry, and the legacy ``suspend``.

Every change goes into the authority's status database (``database``: flock, atomic write,
generation + 1, a log line) and then into the CRL files ``auth-ca.crl`` / ``sign-ca.crl`` of the
authority directory; the HTTP service (CRL and OCSP) sees it at its next request. The card itself
is never touched (a held card still answers every APDU, as a real one does): that is why these
work beside ``mynaemu serve`` holding the card.

Transitions (per certificate):

    good --hold--> hold (certificateHold) --lift--> good
    good|hold --revoke REASON--> revoked (final; the same reason again is a no-op)
    reissue: a new card directory with new keys and certificates; the old ones revoked as superseded

Expiry is the certificates' own validity (the persona's cert_expiry, 23:59:59 JST): nothing
is written; ``expire`` tells a caller from when on a clock (``at=``) sees the card expired.

Hooks for the scenario controls take a card (``Card``, or a card directory) or, with
``change_status``, the certificates' serials; every one takes ``at`` (default: now).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..card import Card
from ..state import StateError, atomic_write
from ..vocabulary import REVOKE_REASONS
from .ca import Authority, default_authority_dir
from .crl import CRL_FILES, write_crl_files
from .database import Revocation, StatusSnapshot, database, utc_seconds

REVOKED_FORMAT = "mynaemu-revoked"  # the pre-database list; read once by database._read_db
CERT_CONTENT = {"auth": "jpki.auth_cert", "sign": "jpki.sign_cert"}
CAS = ("auth", "sign")
SUSPEND_REASON = "keyCompromise"  # a lost card: whoever finds it may use its keys



def serial_text(serial: int) -> str:
    """A certificate serial as people read it (OpenSSL's colon hex): ``3A:9F:…``.

    The colons also keep any run of four digits out of it, so no 4-digit PIN can ever be a
    substring of what ``info`` prints (the secrets tests look for them).
    """
    return ":".join(f"{b:02X}" for b in serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


class LifecycleError(StateError, ValueError):
    """A refused change (not on hold, already revoked, foreign certificate); the message says why."""


@dataclass(frozen=True)
class Change:
    """What one hook did to one certificate: ``action`` is hold, lift, revoke or unchanged."""

    which: str
    serial: int
    action: str
    state: str  # good, hold, revoked
    reason: str | None = None

    def describe(self) -> str:
        what = f"{self.which} certificate {serial_text(self.serial)}"
        if self.action == "unchanged":
            return f"{what}: already {self.state}{f' ({self.reason})' if self.reason else ''}, unchanged"
        return f"{what}: {self.state}{f' ({self.reason})' if self.reason else ''}"


# -- finding things ------------------------------------------------------------------------------
def resolve_authority(authority: Authority | Path | str | None) -> Authority:
    """An Authority object (the installation's when None); StateError when there is none."""
    if isinstance(authority, Authority):
        if authority.directory is None:
            raise LifecycleError("the authority has no directory to keep its status database in")
        return authority
    where = Path(authority) if authority is not None else default_authority_dir()
    if not (where / "authority.json").exists():
        raise StateError(f"{where}: no emulated authority here; run with the MYNAEMU_DATA_DIR the card was issued under")
    return Authority.load(where)


def _certificate_from(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der[: 4 + int.from_bytes(der[2:4], "big")])


def card_certificates(card: Card | Path | str) -> dict[str, x509.Certificate]:
    """The card's JPKI certificates by CA ("auth", and "sign" unless the holder is under 15)."""
    if not isinstance(card, Card):
        card = Card.load(card, read_only=True)
    out = {}
    for which, cid in CERT_CONTENT.items():
        der = card.dir.content.get(cid, b"")
        if isinstance(der, bytes) and der:
            out[which] = _certificate_from(der)
    return out


def _card_of(card: Card | Path | str) -> Card:
    return card if isinstance(card, Card) else Card.load(card, read_only=True)


def _check_issued_by(authority: Authority, which: str, cert: x509.Certificate, where: object) -> None:
    ca = authority.auth_ca_certificate if which == "auth" else authority.sign_ca_certificate
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise LifecycleError(f"{where}: its {which} certificate was not issued by the authority in "
                             f"{authority.directory}; run with the MYNAEMU_DATA_DIR the card was issued under "
                             "(nothing was changed)") from None


def _targets(card: Card, authority: Authority, which: Iterable[str]) -> list[tuple[str, int]]:
    certs = card_certificates(card)
    out = []
    for ca in which:
        if ca not in CAS:
            raise LifecycleError(f"unknown certificate {ca!r}; the card's are auth and sign")
        if ca in certs:
            _check_issued_by(authority, ca, certs[ca], card.dir.path)
            out.append((ca, certs[ca].serial_number))
    if not out:
        raise LifecycleError(f"{card.dir.path}: has no such certificate")
    return out


# -- the one writer --------------------------------------------------------------------------------
def change_status(authority: Authority | Path | str | None, targets: Iterable[tuple[str, int]], action: str, *,
                  reason: str | None = None, at: datetime | None = None, card_id: str | None = None,
                  superseded_by: str | None = None) -> list[Change]:
    """Hold, lift or revoke certificates by (CA, serial); all or nothing. Rewrites the CRL files.

    LifecycleError for a refused transition (lift of a certificate not on hold, hold or revoke of
    a revoked one for another reason): then nothing at all is changed.
    """
    authority = resolve_authority(authority)
    when = utc_seconds(at or datetime.now(UTC))
    if action == "revoke" and reason not in REVOKE_REASONS:
        raise LifecycleError(f"revoke: the reason must be one of {', '.join(REVOKE_REASONS)} (hold is `hold`)")
    if action not in ("hold", "lift", "revoke"):
        raise LifecycleError(f"unknown action {action!r}: hold, lift or revoke")
    db = database(authority.directory)
    changes: list[Change] = []
    with db.changing() as doc:
        entries = doc["entries"]
        for ca, serial in targets:
            key = f"{ca}:{serial}"
            current = entries.get(key)
            state = current["state"] if current else "good"
            old_reason = current["reason"] if current else None
            if action == "hold":
                if state == "revoked":
                    raise LifecycleError(f"{ca} certificate {serial_text(serial)} is revoked ({old_reason}); it cannot be held")
                if state == "hold":
                    changes.append(Change(ca, serial, "unchanged", "hold", "certificateHold"))
                    continue
                entry = Revocation(ca, serial, "hold", "certificateHold", when, card_id)
                entries[key] = entry.to_json()
                changes.append(Change(ca, serial, "hold", "hold", "certificateHold"))
            elif action == "lift":
                if state != "hold":
                    why = "is not on hold" if state == "good" else f"is revoked ({old_reason}); a revocation is final"
                    raise LifecycleError(f"{ca} certificate {serial_text(serial)} {why}; nothing to lift")
                del entries[key]
                changes.append(Change(ca, serial, "lift", "good"))
            else:
                if state == "revoked":
                    if old_reason == reason:
                        changes.append(Change(ca, serial, "unchanged", "revoked", reason))
                        continue
                    raise LifecycleError(f"{ca} certificate {serial_text(serial)} is already revoked ({old_reason})")
                entry = Revocation(ca, serial, "revoked", reason or "unspecified", when, card_id, superseded_by)
                entries[key] = entry.to_json()
                changes.append(Change(ca, serial, "revoke", "revoked", reason))
            doc["log"].append({"time": when.isoformat(), "action": action, "ca": ca, "serial": str(serial),
                               "reason": reason if action == "revoke" else None, "card_id": card_id})
    _refresh_crl_files(authority, when)
    return changes


def _refresh_crl_files(authority: Authority, when: datetime) -> None:
    """Rewrite the CRL files; they are a copy for offline use (the service builds its own from the
    database), so a failure after the change was recorded is logged, not reported as no change."""
    try:
        write_crl_files(authority, database(authority.directory).snapshot(), at=when)
    except OSError as exc:
        logging.getLogger("mynaemu.authority").warning("the CRL files in %s could not be rewritten (%s); "
                                                        "the change is recorded and served", authority.directory, exc)


# -- hooks by card ---------------------------------------------------------------------------------
def hold(card: Card | Path | str, *, authority: Authority | Path | str | None = None,
         which: Iterable[str] = CAS, at: datetime | None = None) -> list[Change]:
    """Put the card's certificates on hold (certificateHold on the CRLs, OCSP revoked)."""
    authority, card = resolve_authority(authority), _card_of(card)
    return change_status(authority, _targets(card, authority, which), "hold", at=at, card_id=card.dir.card_id)


def lift(card: Card | Path | str, *, authority: Authority | Path | str | None = None,
         which: Iterable[str] = CAS, at: datetime | None = None) -> list[Change]:
    """Lift a hold: the certificates leave the next CRL and OCSP answers good again."""
    authority, card = resolve_authority(authority), _card_of(card)
    return change_status(authority, _targets(card, authority, which), "lift", at=at, card_id=card.dir.card_id)


def revoke(card: Card | Path | str, reason: str, *, authority: Authority | Path | str | None = None,
           which: Iterable[str] = CAS, at: datetime | None = None, superseded_by: str | None = None) -> list[Change]:
    """Revoke the card's certificates for ``reason`` (an RFC 5280 name, e.g. keyCompromise)."""
    authority, card = resolve_authority(authority), _card_of(card)
    return change_status(authority, _targets(card, authority, which), "revoke", reason=reason, at=at,
                         card_id=card.dir.card_id, superseded_by=superseded_by)


def expire(card: Card | Path | str) -> datetime:
    """The first instant at which every certificate of the card is expired (pass it as ``at``)."""
    certs = card_certificates(card)
    return max(c.not_valid_after_utc for c in certs.values()) + timedelta(seconds=1)


@dataclass(frozen=True)
class Reissued:
    """A reissue: the new card (its secrets are the old card's) and what happened to the old certificates."""

    issued: object  # mynaemu.issuance.IssuedCard
    changes: list[Change]


def reissue(card: Card | Path | str, new_dir: Path | str | None = None, *, new_my_number: bool = False,
            authority: Authority | Path | str | None = None, at: datetime | None = None) -> Reissued:
    """Issue a new card for the same holder into ``new_dir``; revoke the old certificates as superseded.

    The new card has new keys, certificates, card serial and dates (issued on ``at``'s date, JST),
    the old card's PINs and persona (name, address, birth, sex) and the same My Number unless
    ``new_my_number``. ``new_dir`` defaults to ``CARD_DIR-reissued``.
    """
    import dataclasses
    import random

    from ..issuance import issue_card, persona_from_json
    from ..persona import Persona

    authority, card = resolve_authority(authority), _card_of(card)
    targets = _targets(card, authority, CAS)
    snapshot = database(authority.directory).snapshot()
    for ca, serial in targets:
        entry = snapshot.revocation(ca, serial)
        if entry is not None and entry.state == "revoked":
            raise LifecycleError(f"{card.dir.path}: its {ca} certificate is already revoked ({entry.reason}); "
                                 "reissue from the card that replaced it")
    when = utc_seconds(at or datetime.now(UTC))
    old = persona_from_json(card.dir.meta["persona"])
    issued_on = when.astimezone(timezone_jst()).date()
    fresh = Persona.generate(random.Random(), name=old.name, birth=old.birth, sex=old.sex,
                             my_number=None if new_my_number else old.my_number, issued=issued_on)
    persona = dataclasses.replace(fresh, address=old.address, family_name_kana=old.family_name_kana,
                                  given_name_kana=old.given_name_kana)
    secrets = {k: card.keyring[k].value.decode("ascii") for k in ("auth", "sign", "text", "juki")}
    target = Path(new_dir) if new_dir is not None else card.dir.path.with_name(card.dir.path.name + "-reissued")
    profile = card.dir.path / "profile.toml"
    issued = issue_card(target, persona=persona, secrets=secrets, profile=profile, authority=authority)
    new_id = Card.load(issued.path, read_only=True).dir.card_id
    changes = change_status(authority, targets, "revoke", reason="superseded", at=when,
                            card_id=card.dir.card_id, superseded_by=new_id)
    return Reissued(issued, changes)


def timezone_jst():
    from .ca import JST

    return JST


# -- the legacy suspend ----------------------------------------------------------------------------
def suspend(card: Card, authority: Authority, *, at: datetime | None = None) -> dict[str, Path]:
    """``admin suspend`` (a lost card): revoke both certificates as keyCompromise and mark the card.

    Returns the CRL files' paths. Needs the card's writer (it writes ``suspended`` to card.json).
    """
    if authority.directory is None:
        raise StateError("the authority has no directory to keep its CRLs in")
    when = utc_seconds(at or datetime.now(UTC))
    targets = _targets(card, authority, CAS)
    snapshot = database(authority.directory).snapshot()
    fresh = [(ca, s) for ca, s in targets if snapshot.revocation(ca, s) is None or snapshot.revocation(ca, s).state == "hold"]
    with contextlib.suppress(LifecycleError):  # certificates already revoked for another reason stay so
        change_status(authority, fresh, "revoke", reason=SUSPEND_REASON, at=when, card_id=card.dir.card_id)
    meta = dict(card.dir.meta, suspended=card.dir.meta.get("suspended") or when.isoformat())
    atomic_write(card.dir.path / "card.json", json.dumps(meta, indent=1, ensure_ascii=False, sort_keys=True).encode())
    card.dir.meta = meta
    paths = write_crl_files(authority, database(authority.directory).snapshot(), at=when)
    return {which: paths[which] for which in CRL_FILES}


def write_crls(authority: Authority, revoked: object = None) -> dict[str, Path]:
    """Rewrite both CRL files from the status database (``revoked`` is ignored; kept for old callers)."""
    return write_crl_files(authority, database(authority.directory).snapshot(), at=datetime.now(UTC))


# -- what `info` shows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CertificateStatus:
    """One certificate of a card at one instant."""

    which: str
    serial: int
    not_before: datetime
    not_after: datetime
    status: str  # good, hold, revoked, expired, not yet valid, unknown (not this authority's)
    reason: str | None = None
    since: datetime | None = None

    def to_json(self) -> dict:
        return {"serial": serial_text(self.serial), "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(), "status": self.status, "reason": self.reason,
                "since": self.since.isoformat() if self.since else None}

    def line(self) -> str:
        extra = f" ({self.reason} since {self.since:%Y-%m-%d %H:%M:%S} UTC)" if self.reason and self.since else ""
        return (f"{self.which:<5} {serial_text(self.serial)}  {self.not_before:%Y-%m-%d}..{self.not_after:%Y-%m-%d}  "
                f"{self.status.upper()}{extra}")


def certificate_status(card: Card | Path | str, *, at: datetime | None = None,
                       authority: Authority | Path | str | None = None) -> list[CertificateStatus]:
    """Every JPKI certificate of the card with its validity and status at ``at`` (default now).

    Status comes from the local status database (no network); a certificate of another
    authority, or with no authority here, is ``unknown``. A revocation after ``at`` does not count.
    """
    when = utc_seconds(at or datetime.now(UTC))
    snapshot, ca_certs = StatusSnapshot(), {}
    with contextlib.suppress(StateError, LifecycleError, OSError, ValueError):
        auth = resolve_authority(authority) if isinstance(authority, Authority) else None
        where = Path(authority) if isinstance(authority, str | Path) else default_authority_dir()
        if auth is not None:
            where = Path(auth.directory)
        from .verify import load_trust_anchors

        ca_certs = load_trust_anchors(where)
        snapshot = database(where).snapshot()
    out = []
    for which, cert in card_certificates(card).items():
        entry = snapshot.revocation(which, cert.serial_number)
        ca = ca_certs.get(which)
        foreign = ca is None
        if ca is not None:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                foreign = True
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        reason = since = None
        if foreign:
            status = "unknown"
        elif entry is not None and entry.time <= when:
            status, reason, since = entry.state, entry.reason, entry.time
        elif when < start:
            status = "not yet valid"
        elif when > end:
            status = "expired"
        else:
            status = "good"
        out.append(CertificateStatus(which, cert.serial_number, start, end, status, reason, since))
    return out
