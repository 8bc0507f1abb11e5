"""Durable card state: retry counters and reference values, written atomically.

Every change is a whole new file: written to a temporary file in the card directory, fsynced,
renamed over the old one, and the directory fsynced. So a crash at any instant leaves either
the old state or the new one, never a mix (docs/card-interface.md, "Anti-tearing"). A state file
that does not parse, has an unknown version, belongs to another card or contradicts the profile
is refused with a message naming the file and the field; it is never re-created, since that
would reset retry counters.

One card has one set of counters. A process that may write a card's state holds a
``CardLock``: a claim on the card directory naming the process's lease (no second process; see
"one writer per card" below for why that costs no descriptor per card), registered by the
directory's (device, inode) (no second writer in this process, whatever the path's spelling).
Writes go through a descriptor of the locked directory, checked to be that directory, so a card
directory moved away or replaced is never written behind the lock's back.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .private_files import data_dir, make_private_dirs

log = logging.getLogger("mynaemu.state")

STATE_FORMAT = "mynaemu-state"
STATE_VERSION = 1

# Files that hold secrets (PIN values, private keys): warned about when others can read them.
PRIVATE_FILES = frozenset({"state.json", "keys.json"})

# Names of the instants a write passes through; tests make a crash happen at each one.
CRASH_POINTS = ("open", "written", "synced", "renamed", "dir_synced")

# A card's JSON files are small (content.json, the largest, holds a face image): anything much
# larger is not ours, and reading it whole would only cost memory.
MAX_JSON_BYTES = 16 * 1024 * 1024


class StateError(Exception):
    """A state file that cannot be trusted; the message names the file and what is wrong."""


class CardBusyError(StateError):
    """The card's writer lock is held by another process (e.g. ``mynaemu serve``)."""


class CardMovedError(OSError):
    """The card directory's path no longer names the directory that was locked."""


def temp_files(path: Path) -> list[Path]:
    """Temporary files an interrupted ``atomic_write`` of ``path`` may have left behind."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    fault: Callable[[str], None] | None = None,
    dir_fd: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, whole.

    With ``dir_fd`` (an open descriptor of ``path``'s directory) every step goes through that
    descriptor: the file lands in the directory that was opened, whatever its path names now.
    """
    if fault:
        fault("open")
    own_dir = dir_fd is None
    if own_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # A fresh random name, created exclusively: a file or link planted in the directory is
        # never written through.
        tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask; a key file must end up 0600
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fault:
                fault("written")
            os.fsync(fd)
        except BaseException:  # e.g. disk full: free the space now (a crash's leftover goes at next load)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.close(fd)
        if fault:
            fault("synced")
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if fault:
            fault("renamed")
        os.fsync(dir_fd)
        if fault:
            fault("dir_synced")
    finally:
        if own_dir:
            os.close(dir_fd)


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return doc


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, path: Path) -> object:
    """Strict JSON: no duplicate keys, no NaN/Infinity, bounded depth; StateError naming ``path``."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except RecursionError:
        raise StateError(f"{path}: nested too deeply to be a card file; refusing to use it") from None
    except (ValueError, UnicodeDecodeError) as exc:
        detail = str(exc) if str(exc).startswith(("duplicate key", "NaN", "Infinity", "-Infinity")) else exc.__class__.__name__
        raise StateError(
            f"{path}: corrupt or truncated ({detail}); refusing to use it. "
            "Restore it from a backup or re-issue the card; it is never re-created silently, "
            "because that would reset the retry counters."
        ) from None


def read_json(path: Path, expected_format: str, expected_version: int, *, dir_fd: int | None = None) -> dict:
    """Load one of the card's JSON files, refusing anything malformed with a clear message."""
    try:
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: opening a FIFO must not hang us
        fd = os.open(path.name if dir_fd is not None else path, flags, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                # A FIFO or device would block or never end; a directory cannot be state.
                raise StateError(f"{path}: not a regular file; refusing to read it")
            if st.st_size > MAX_JSON_BYTES:
                raise StateError(f"{path}: {st.st_size} bytes, too large to be a card file; refusing to read it")
            if st.st_mode & 0o077 and path.name in PRIVATE_FILES:
                log.warning("%s: readable by other users (mode %o); it holds secrets, chmod 600 it", path, st.st_mode & 0o777)
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read(MAX_JSON_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise StateError(f"{path}: missing; the card directory is incomplete (re-issue the card)") from None
    except PermissionError:
        raise StateError(f"{path}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise StateError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    doc = parse_json(raw, path)
    if not isinstance(doc, dict) or doc.get("format") != expected_format:
        raise StateError(f"{path}: not a {expected_format} file")
    version = doc.get("version")
    if type(version) is not int or version != expected_version:
        raise StateError(
            f"{path}: unknown {expected_format} version {version!r} (this mynaemu reads version {expected_version})"
        )
    return doc



_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_KEY_FIELDS = ("limit", "tries_left", "value")


class StateStore:
    """The file ``state.json`` of one card: counters and reference values per key name.

    ``lock`` (the card's ``CardLock``) is where writes go; without one (issuance, into a staging
    directory nobody else knows) they go by path. A read-only store never writes.
    """

    def __init__(self, path: Path, card_id: str, *, read_only: bool = False, lock: CardLock | None = None) -> None:
        self.path = path
        self.card_id = card_id
        self.read_only = read_only
        self.lock = lock
        # Set by tests to simulate a crash or a failing disk at one of CRASH_POINTS.
        self.fault: Callable[[str], None] | None = None

    def load(self, limits: dict[str, int] | None = None) -> dict[str, dict]:
        """Read and check the state; returns {key name: {"limit", "tries_left", "value"}}.

        With ``limits`` (the profile's retry limit per key) the state must hold exactly those
        keys, with those limits.
        """
        if self.lock is not None and self.lock.held:
            with self.lock.directory() as dir_fd:
                doc = read_json(self.path, STATE_FORMAT, STATE_VERSION, dir_fd=dir_fd)
        else:
            doc = read_json(self.path, STATE_FORMAT, STATE_VERSION)
        keys = self._keys(doc, limits)
        if not self.read_only:
            # A write cut short leaves its temporary file (partial state, PIN values included): the
            # rename never happened, so it is not the state; remove it.
            for leftover in temp_files(self.path):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        return keys

    def _fail(self, msg: str) -> StateError:
        return StateError(f"{self.path}: {msg}; refusing to use it (restore it from a backup or re-issue the card)")

    def _keys(self, doc: dict, limits: dict[str, int] | None) -> dict[str, dict]:
        card_id = doc.get("card_id")
        if card_id != self.card_id:
            raise StateError(f"{self.path}: belongs to card {card_id!r}, not to this card {self.card_id!r}")
        keys = doc.get("keys")
        if not isinstance(keys, dict):
            raise self._fail("has no 'keys' table")
        if limits is not None:
            missing = [n for n in limits if n not in keys]
            unknown = [n for n in keys if n not in limits]
            if missing:
                raise self._fail(f"has no state for key(s) {', '.join(missing)} of the card's profile")
            if unknown:
                raise self._fail(f"has key(s) {', '.join(unknown)} that the profile does not know")
        out: dict[str, dict] = {}
        for name, k in keys.items():
            where = f"keys.{name}"
            if not isinstance(k, dict):
                raise self._fail(f"{where} must be a table of {', '.join(_KEY_FIELDS)}")
            wrong_fields = sorted(set(k) ^ set(_KEY_FIELDS))
            if wrong_fields:
                raise self._fail(f"{where} must have exactly the fields {', '.join(_KEY_FIELDS)} (not {', '.join(wrong_fields)})")
            limit, tries, value = k["limit"], k["tries_left"], k["value"]
            # type(...) is int: bool is an int to Python, and "3" or 2.9 are not counters.
            if type(limit) is not int or not 1 <= limit <= 15:
                raise self._fail(f"{where}.limit must be an integer from 1 to 15, not {limit!r}")
            if limits is not None and limit != limits[name]:
                raise self._fail(f"{where}.limit is {limit}, but the card's profile says {limits[name]}")
            if type(tries) is not int or not 0 <= tries <= limit:
                raise self._fail(f"{where}.tries_left must be an integer from 0 to {limit}, not {tries!r}")
            if not isinstance(value, str) or not _HEX.fullmatch(value):
                # Never quote the value: it is the secret.
                raise self._fail(f"{where}.value must be lower-case hex")
            out[name] = {"limit": limit, "tries_left": tries, "value": bytes.fromhex(value)}
        return out

    def save(self, keys: dict[str, dict]) -> None:
        """Write the whole state durably (see module doc); OSError if it cannot be."""
        if self.read_only:
            raise PermissionError(13, "card loaded read-only")
        doc = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "card_id": self.card_id,
            "keys": {
                name: {"limit": k["limit"], "tries_left": k["tries_left"], "value": k["value"].hex()}
                for name, k in keys.items()
            },
        }
        # Compact separators keep json on its C encoder (indent= forces the pure-Python one, ~4x
        # slower): this write is on every VERIFY's path.
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        if self.lock is None:
            atomic_write(self.path, data, fault=self.fault)
            return
        with self.lock.directory() as dir_fd:
            atomic_write(self.path, data, fault=self.fault, dir_fd=dir_fd)

# -- one writer per card -------------------------------------------------------------------------
# Two holders of a card's counters in memory could each write their own view, and the later
# write would undo the other's decrement: an extra PIN try. So a card has at most one writer.
#
# Across processes, without a descriptor per loaded card: a writing process holds one *lease*
# for as long as it lives, an exclusive flock on a file of its own in $MYNAEMU_DATA_DIR/leases.
# A card it loads for writing carries a *claim*, CARD_DIR/.run/writer.json, naming that lease
# and the card directory's (device, inode) (so a copied directory's claim names another
# directory). A claim is live while its lease is locked, i.e. while its process lives; a killed
# process's claims go stale with it. Claims are checked, made and dropped under a short flock on
# the card directory, so two loaders never both find a card free. Where no lease or claim can be
# made (no writable data directory, a read-only card directory), the card keeps that flock for
# as long as it is loaded, as before: one descriptor for that card.
#
# In this process a registry keyed by what the path names (device, inode), not by how it is
# spelled (a symlink, "/./", a relative path), keeps out a second writer.
_writers: dict[tuple[int, int], CardLock] = {}
_writers_guard = threading.RLock()  # reentrant: a finalizer may release a lock while another is taken

RUN_DIR = ".run"  # the card directory's runtime files (also the serve's control socket)
CLAIM_FILE = "writer.json"
CLAIM_FORMAT = "mynaemu-writer-claim"
# How long a loader waits for another's claim (a few file operations) before calling it busy.
CLAIM_WAIT_SECONDS = 1.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class CardLock:
    """This process's writer lock on one card directory; see ``acquire_card_lock``.

    ``fd`` is an open descriptor of the directory while the card is being loaded (and for good
    when the card holds its own flock, ``claimed`` False); -1 otherwise. ``directory()`` gives
    a descriptor for a write either way.
    """

    __slots__ = ("__weakref__", "fd", "held", "identity", "nonce", "path")

    def __init__(self, path: Path, fd: int, identity: tuple[int, int]) -> None:
        self.path = path
        self.fd = fd  # flocked until ``idle`` hands the card to a claim
        self.identity = identity
        # The claim's random name for this load: without a descriptor pinning the directory, its
        # (device, inode) may be reused (a removed tmpfs, a deleted directory); the nonce is not.
        self.nonce: str | None = None
        self.held = True

    @property
    def claimed(self) -> bool:
        """True once a claim holds the card (``idle``); False while the directory's flock does."""
        return self.nonce is not None

    def genuine(self) -> bool:
        """True while the directory still carries this lock's claim (always, for a kept flock)."""
        if not self.claimed:
            return self.held
        try:
            fd = os.open(self.path, _DIR_FLAGS)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            return (st.st_dev, st.st_ino) == self.identity and (_read_claim(fd) or {}).get("nonce") == self.nonce
        finally:
            os.close(fd)

    def check_path(self) -> None:
        """Raise CardMovedError unless the path still names the locked directory."""
        try:
            st = os.stat(self.path)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None
        if now != self.identity:
            raise _moved(self, now)

    @contextlib.contextmanager
    def directory(self) -> Iterator[int]:
        """A descriptor of the locked directory for one read or write; CardMovedError if the path names another."""
        if not self.held:
            raise OSError(9, "the card was closed")
        if self.fd >= 0:
            self.check_path()
            yield self.fd
            return
        try:
            fd = os.open(self.path, _DIR_FLAGS)
        except OSError:
            raise _moved(self, None) from None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.identity or (_read_claim(fd) or {}).get("nonce") != self.nonce:
                raise _moved(self, (st.st_dev, st.st_ino))
            yield fd
        finally:
            os.close(fd)

    def idle(self) -> None:
        """Once the card is loaded: hand the card from the directory's flock to a claim, and close the descriptor.

        Claimed only now, so a load that fails (a broken file) leaves the directory as it was.
        Where no claim can be written, the card keeps the flock and its descriptor.
        """
        with _writers_guard:
            if self.claimed or self.fd < 0 or not self.held:
                return
            lease = _process_lease()
            if lease is None:
                return
            try:
                self.nonce = _write_claim(self.fd, self.identity, lease)
            except OSError as exc:  # e.g. a read-only card directory or a full disk: keep the flock
                log.info("%s: no writer claim (%s); the card keeps its own lock", self.path, exc.strerror or exc)
                return
            fd, self.fd = self.fd, -1
        os.close(fd)  # drops the flock: the claim holds the card from here

    def release(self) -> None:
        """Give the card up (idempotent): another process, or another load, may then take it."""
        with _writers_guard:
            if not self.held:
                return
            self.held = False
            if _writers.get(self.identity) is self:
                del _writers[self.identity]
            fd, self.fd = self.fd, -1
        try:
            if self.claimed:
                with contextlib.suppress(OSError, CardBusyError):
                    _drop_claim(self, fd)
        finally:
            if fd >= 0:
                os.close(fd)  # closing the descriptor drops a flock the card kept


def _moved(lock: CardLock, now: tuple[int, int] | None) -> CardMovedError:
    return CardMovedError(
        0,
        f"the card directory {lock.path} was moved or replaced since it was loaded "
        f"(locked inode {lock.identity[1]}, the path now names {'nothing' if now is None else f'inode {now[1]}'}); "
        "refusing to write, load the card again",
    )


def directory_identity(path: Path | str) -> tuple[int, int]:
    """(device, inode) of the directory ``path`` names (StateError if it names none)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StateError(f"{path}: cannot open the card directory ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"{path}: not a card directory")
    return st.st_dev, st.st_ino


def acquire_card_lock(directory: Path) -> CardLock:
    """Take the card's writer lock; StateError if another process or another load holds it.

    The lock is the directory's flock until ``CardLock.idle`` (the card loaded) turns it into a
    claim (``.run/writer.json``); taking it changes no card file.
    """
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        raise StateError(f"{directory}: cannot open the card directory ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    identity = (st.st_dev, st.st_ino)
    with _writers_guard:
        other = _writers.get(identity)
        if other is not None and not other.genuine():
            # Its directory is gone and this one took its (device, inode): that Card can write
            # nothing any more (its writes check the claim), so it is no writer of this card.
            del _writers[identity]
            other = None
        if other is not None:
            os.close(fd)
            same = "" if os.path.abspath(other.path) == os.path.abspath(directory) else f" (as {other.path})"
            raise StateError(
                f"{directory}: this card is already loaded for writing in this process{same}; use that Card, "
                "or close() it first (two copies of one card's counters could undo each other's decrements)"
            )
        try:
            _flock_briefly(fd, directory)
            holder = _live_claim(fd, identity)
            if holder is not None:
                raise _busy(directory, holder)
        except BaseException:
            os.close(fd)
            raise
        # Flocked while the card loads; ``CardLock.idle`` then hands it to a claim.
        lock = _writers[identity] = CardLock(Path(directory), fd, identity)
    return lock


def _busy(directory: Path, holder: str) -> CardBusyError:
    return CardBusyError(
        f"{directory}: the card is in use by another process ({holder}, e.g. `mynaemu serve`); stop that "
        "first. `mynaemu info` works meanwhile."
    )


def _flock_briefly(fd: int, directory: Path) -> None:
    """The card directory's flock, waiting out another loader's claim; CardBusyError if it stays taken."""
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _busy(directory, "it keeps the card directory locked") from None
            time.sleep(0.001)


def _read_claim(card_fd: int) -> dict | None:
    """The claim in the card directory, None if there is none (or it is no claim)."""
    try:
        run_fd = os.open(RUN_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=card_fd)
    except OSError:
        return None
    try:
        # Non-blocking, regular files only: a FIFO or a directory planted there is no claim.
        fd = os.open(CLAIM_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=run_fd)
    except OSError:
        return None
    finally:
        os.close(run_fd)
    try:
        raw = os.read(fd, 4096) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(doc, dict) and doc.get("format") == CLAIM_FORMAT and isinstance(doc.get("lease"), str)
    return doc if ok else None


def _live_claim(card_fd: int, identity: tuple[int, int]) -> str | None:
    """Who holds the card by a live claim ("process N"), or None if nobody does."""
    doc = _read_claim(card_fd)
    if doc is None or [doc.get("dev"), doc.get("ino")] != list(identity):
        return None  # no claim, or one copied along with another card directory
    if _lease is not None and doc["lease"] == str(_lease.path):
        return None  # this process's own, left behind: the registry above speaks for this process
    pid = doc.get("pid")
    holder = f"process {pid}" if type(pid) is int else "another process"
    try:
        fd = os.open(doc["lease"], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # its process ended, and its lease was cleaned up
    except OSError:
        return holder  # a lease we may not look at: assume it lives
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder
    finally:
        os.close(fd)
    return None  # its process died: the lease is free


def _write_claim(card_fd: int, identity: tuple[int, int], lease: _Lease) -> str:
    """Write the card's claim for this process; returns its nonce. On failure nothing is left behind."""
    made_run_dir = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(RUN_DIR, 0o700, dir_fd=card_fd)
        made_run_dir = True
    try:
        run_fd = os.open(RUN_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=card_fd)
        try:
            if os.fstat(run_fd).st_uid != os.geteuid():
                raise PermissionError(13, f"{RUN_DIR} is not this user's")
            os.fchmod(run_fd, 0o700)
            nonce = secrets.token_hex(8)
            doc = {"format": CLAIM_FORMAT, "lease": str(lease.path), "pid": os.getpid(),
                   "dev": identity[0], "ino": identity[1], "nonce": nonce}
            # Renamed into place but not fsynced: after a crash a claim is stale anyway (its lease went).
            tmp = f".{CLAIM_FILE}.{nonce}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=run_fd)
            try:
                try:
                    data = json.dumps(doc).encode()
                    if os.write(fd, data) != len(data):  # a cut claim would read as none: refuse it
                        raise OSError(28, "short write of the writer claim")
                finally:
                    os.close(fd)
                os.replace(tmp, CLAIM_FILE, src_dir_fd=run_fd, dst_dir_fd=run_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=run_fd)
                raise
            return nonce
        finally:
            os.close(run_fd)
    except BaseException:
        if made_run_dir:
            with contextlib.suppress(OSError):
                os.rmdir(RUN_DIR, dir_fd=card_fd)
        raise


def _drop_claim(lock: CardLock, fd: int) -> None:
    """Remove the card's claim if it is still this process's."""
    own = fd < 0
    if own:
        try:
            fd = os.open(lock.path, _DIR_FLAGS)
        except OSError:
            return
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != lock.identity:
            return  # moved away: its claim went with it, and goes stale when this process ends
        _flock_briefly(fd, lock.path)
        try:
            doc = _read_claim(fd)
            if doc is not None and doc.get("nonce") == lock.nonce:
                run_fd = os.open(RUN_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    os.unlink(CLAIM_FILE, dir_fd=run_fd)
                finally:
                    os.close(run_fd)
                with contextlib.suppress(OSError):  # leave the directory as it was found, if nothing else is there
                    os.rmdir(RUN_DIR, dir_fd=fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        if own:
            os.close(fd)


# -- the process's lease --------------------------------------------------------------------------
class _Lease:
    """This process's lease: an exclusive flock on ``path``, held until the process ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.pid = os.getpid()


_lease: _Lease | None = None


def lease_dir() -> Path:
    """Where writing processes keep their leases: ``$MYNAEMU_DATA_DIR/leases``."""
    return data_dir() / "leases"


def _process_lease() -> _Lease | None:
    """This process's lease, made on first use; None if none can be made (then cards keep a flock each)."""
    global _lease
    if _lease is not None:
        return _lease
    directory = lease_dir()
    try:
        make_private_dirs(directory)
        _sweep_leases(directory)
        # Locked before it has its final name: a sweeper never sees an unlocked live lease.
        token = secrets.token_hex(8)
        tmp = directory / f"{token}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            path = directory / f"{token}.lease"
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:
        log.info("%s: no writer lease (%s); each card keeps its own lock", directory, exc.strerror or exc)
        return None
    _lease = _Lease(path, fd)
    return _lease


def _sweep_leases(directory: Path, limit: int = 64) -> None:
    """Remove leases of processes that ended without removing theirs (killed)."""
    with os.scandir(directory) as entries:
        names = [e.name for e in entries if e.name.endswith(".lease")][:limit]
    for name in names:
        try:
            fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a checker beside it is not blocked
            with contextlib.suppress(OSError):
                os.unlink(directory / name)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


@atexit.register
def _drop_lease() -> None:
    lease = _lease
    if lease is not None and lease.pid == os.getpid():
        with contextlib.suppress(OSError):
            lease.path.unlink()


def _forget_locks_after_fork() -> None:
    # A forked child must not hold its parent's cards: close its copies of the lock descriptors
    # and of the lease (the parent's own descriptors keep them), so the child can neither write
    # the cards nor keep them locked after the parent lets go. Its inherited Card objects refuse
    # every command; a card it loads itself is checked against the parent's claims.
    global _writers_guard, _lease
    for lock in _writers.values():
        if lock.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
        lock.fd = -1
        lock.held = False
    _writers.clear()
    _writers_guard = threading.RLock()  # another thread may have held it at the fork: start free
    if _lease is not None:
        with contextlib.suppress(OSError):
            os.close(_lease.fd)
        _lease = None


os.register_at_fork(after_in_child=_forget_locks_after_fork)
