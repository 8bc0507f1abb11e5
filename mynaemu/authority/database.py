"""What the emulated CAs know about their certificates: which they issued, which are revoked or held.

Two files in the authority directory (0700), both 0600:

    issued.jsonl      one line per certificate issued: CA, serial, validity (appended, fsynced)
    revocations.json  the revocation database: per certificate its state (``hold`` or
                      ``revoked``), RFC 5280 reason, time, card id; a generation number that
                      grows with every change (it is the CRL number); and a log of every change

Changes take an flock on ``.status.lock`` (one writer across processes: ``admin``, the scenario
controls, ``serve``), then write the whole database atomically (temp file, fsync, rename,
directory fsync), so a crash leaves the old state or the new one. Readers (the HTTP service,
``info``, the verifier's local checks) take a ``snapshot()``, which re-reads only when a file's
(inode, mtime, size) changed: a change is visible at the next request, without restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from ..state import StateError, atomic_write, read_json

DB_FILE = "revocations.json"
DB_FORMAT = "mynaemu-revocations"
DB_VERSION = 1
ISSUED_FILE = "issued.jsonl"
LOCK_FILE = ".status.lock"
LEGACY_FILE = "revoked.json"  # written by `admin suspend` before the database existed
CAS = ("auth", "sign")

# RFC 5280 §5.3.1 reason names (as written in the database and printed) -> cryptography's flags.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
REASON_NAMES = {flag: name for name, flag in REASONS.items()}
# What `revoke --reason` accepts: certificateHold is `hold`, removeFromCRL only exists on delta CRLs.


def utc_seconds(at: datetime) -> datetime:
    """``at`` in UTC, whole seconds (what CRLs and OCSP carry); naive times are taken as UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Revocation:
    """One certificate on a CRL: held (``certificateHold``) or revoked for ``reason``."""

    ca: str
    serial: int
    state: str  # "hold" or "revoked"
    reason: str  # an RFC 5280 reason name (REASONS)
    time: datetime
    card_id: str | None = None
    superseded_by: str | None = None

    @property
    def reason_flag(self) -> x509.ReasonFlags:
        return REASONS[self.reason]

    def to_json(self) -> dict:
        return {"ca": self.ca, "serial": str(self.serial), "state": self.state, "reason": self.reason,
                "time": self.time.isoformat(), "card_id": self.card_id, "superseded_by": self.superseded_by}


@dataclass(frozen=True)
class StatusSnapshot:
    """The database at one moment: what ``status`` answers comes from here."""

    generation: int = 0
    revocations: dict[tuple[str, int], Revocation] = field(default_factory=dict)
    issued: frozenset[tuple[str, int]] = frozenset()

    def revocation(self, ca: str, serial: int) -> Revocation | None:
        return self.revocations.get((ca, serial))

    def is_issued(self, ca: str, serial: int) -> bool:
        """Issued by this authority (in the issuance registry, or ever revoked by it)."""
        return (ca, serial) in self.issued or (ca, serial) in self.revocations

    def revoked_by(self, ca: str) -> list[Revocation]:
        """The CA's CRL entries, oldest first."""
        return sorted((r for r in self.revocations.values() if r.ca == ca), key=lambda r: (r.time, r.serial))


def _entry(path: Path, key: str, doc: object) -> Revocation:
    try:
        if not isinstance(doc, dict):
            raise TypeError
        entry = Revocation(doc["ca"], int(doc["serial"]), doc["state"], doc["reason"],
                           datetime.fromisoformat(doc["time"]), doc.get("card_id"), doc.get("superseded_by"))
    except (KeyError, TypeError, ValueError):
        raise StateError(f"{path}: entries.{key} is not a revocation record (ca, serial, state, reason, time)") from None
    if entry.ca not in CAS or entry.state not in ("hold", "revoked") or entry.reason not in REASONS:
        raise StateError(f"{path}: entries.{key} has an unknown CA, state or reason")
    if (entry.state == "hold") != (entry.reason == "certificateHold"):
        raise StateError(f"{path}: entries.{key}: state {entry.state} contradicts reason {entry.reason}")
    if entry.time.tzinfo is None:
        raise StateError(f"{path}: entries.{key}.time has no time zone")
    return entry


def _key(ca: str, serial: int) -> str:
    return f"{ca}:{serial}"


class StatusDatabase:
    """The issuance registry and revocation database of one authority directory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.db_path = self.directory / DB_FILE
        self.issued_path = self.directory / ISSUED_FILE
        self._guard = threading.Lock()
        self._seen: tuple | None = None
        self._snapshot = StatusSnapshot()

    # -- reading
    def _identity(self) -> tuple:
        out = []
        for path in (self.db_path, self.issued_path, self.directory / LEGACY_FILE):
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def snapshot(self) -> StatusSnapshot:
        """The current state; re-read from disk only when a file changed since the last call."""
        with self._guard:
            seen = self._identity()
            if seen != self._seen:
                self._snapshot = self._read()
                self._seen = seen
            return self._snapshot

    def _read(self) -> StatusSnapshot:
        doc = self._read_db()
        revocations = {}
        for key, value in doc["entries"].items():
            entry = _entry(self.db_path, key, value)
            revocations[(entry.ca, entry.serial)] = entry
        return StatusSnapshot(int(doc["generation"]), revocations, frozenset(self._read_issued()))

    def _read_db(self) -> dict:
        if self.db_path.exists():
            doc = read_json(self.db_path, DB_FORMAT, DB_VERSION)
            if not isinstance(doc.get("entries"), dict) or type(doc.get("generation")) is not int:
                raise StateError(f"{self.db_path}: needs an 'entries' table and an integer 'generation'")
            doc.setdefault("log", [])
            return doc
        doc = {"format": DB_FORMAT, "version": DB_VERSION, "generation": 0, "entries": {}, "log": []}
        legacy = self.directory / LEGACY_FILE
        if legacy.exists():  # an older `admin suspend`: its revocations were for lost cards
            old = read_json(legacy, "mynaemu-revoked", 1)
            for ca in CAS:
                for item in old.get(ca, []):
                    entry = Revocation(ca, int(item["serial"]), "revoked", "keyCompromise",
                                       datetime.fromisoformat(item["date"]), item.get("card_id"))
                    doc["entries"][_key(ca, entry.serial)] = entry.to_json()
        return doc

    def _read_issued(self) -> set[tuple[str, int]]:
        try:
            raw = self.issued_path.read_bytes()
        except FileNotFoundError:
            return set()
        out = set()
        for line in raw.splitlines():
            # A line cut short by a crash is the last one and was never acknowledged: skip it.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                item = json.loads(line)
                out.add((item["ca"], int(item["serial"])))
        return out

    # -- writing
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The writers' lock (an flock on ``.status.lock``), across processes and threads."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the flock

    @contextlib.contextmanager
    def changing(self) -> Iterator[dict]:
        """Yield the database document under the lock; on a clean exit write it with generation + 1.

        The caller changes ``doc["entries"]`` and appends to ``doc["log"]``; nothing is written if
        it raises.
        """
        with self.locked():
            doc = self._read_db()
            before = json.dumps(doc["entries"], sort_keys=True)
            yield doc
            if json.dumps(doc["entries"], sort_keys=True) == before and not doc.pop("_force", False):
                return
            doc["generation"] += 1
            atomic_write(self.db_path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

    def record_issued(self, ca: str, certificate: x509.Certificate) -> None:
        """Append one certificate to the issuance registry, durably (O_APPEND: one whole line per write)."""
        line = json.dumps({
            "ca": ca,
            "serial": str(certificate.serial_number),
            "not_before": certificate.not_valid_before_utc.isoformat(),
            "not_after": certificate.not_valid_after_utc.isoformat(),
        }).encode() + b"\n"
        try:
            fd = os.open(self.issued_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a certificate the CA could not record is not handed out
            raise OSError(exc.errno, f"{self.issued_path}: the authority's issuance registry could not be written "
                                     f"({exc.strerror or exc}); nothing was issued") from None


_databases: dict[Path, StatusDatabase] = {}
_databases_guard = threading.Lock()


def database(directory: Path | str) -> StatusDatabase:
    """The one StatusDatabase object of ``directory`` in this process (its snapshot cache is shared)."""
    key = Path(directory).absolute()
    with _databases_guard:
        if key not in _databases:
            _databases[key] = StatusDatabase(key)
        return _databases[key]
