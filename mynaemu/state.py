"""Durable card state: retry counters and reference values, written atomically.

Every change is a whole new file: written to a temporary file in the card directory, fsynced,
renamed over the old one, and the directory fsynced. So a crash at any instant leaves either
the old state or the new one, never a mix (docs/card-interface.md, "Anti-tearing"). A state file
that does not parse, has an unknown version, belongs to another card or contradicts the profile
is refused with a message naming the file and the field; it is never re-created, since that
would reset retry counters.

One card has one set of counters. A process that may write a card's state holds a
``CardLock``: an exclusive flock on the card directory (no second process), registered by the
directory's (device, inode) (no second writer in this process, whatever the path's spelling).
Writes go through the locked directory's descriptor, and each write first checks that the path
still names that directory, so a card directory moved away or replaced is never written behind
the lock's back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path

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
        dir_fd = self.lock.fd if self.lock is not None and self.lock.held else None
        doc = read_json(self.path, STATE_FORMAT, STATE_VERSION, dir_fd=dir_fd)
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
        lock = self.lock
        dir_fd = None
        if lock is not None:
            if not lock.held:
                raise OSError(9, "the card was closed")
            lock.check_path()
            dir_fd = lock.fd
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
        atomic_write(self.path, data, fault=self.fault, dir_fd=dir_fd)

# -- one writer per card -------------------------------------------------------------------------
# Two holders of a card's counters in memory could each write their own view, and the later
# write would undo the other's decrement: an extra PIN try. So a card has at most one writer:
# the flock keeps out other processes (and their children: a forked child's copy is closed), the
# registry keeps out a second writer in this process, keyed by what the path names, not by how
# it is spelled (a symlink, "/./", a relative path).
_writers: dict[tuple[int, int], CardLock] = {}
_writers_guard = threading.RLock()  # reentrant: a finalizer may release a lock while another is taken


class CardLock:
    """This process's writer lock on one card directory; see ``acquire_card_lock``."""

    __slots__ = ("__weakref__", "fd", "identity", "path")

    def __init__(self, path: Path, fd: int, identity: tuple[int, int]) -> None:
        self.path = path
        self.fd = fd  # -1 once released
        self.identity = identity

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def check_path(self) -> None:
        """Raise CardMovedError unless the path still names the locked directory."""
        try:
            st = os.stat(self.path)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None
        if now != self.identity:
            raise CardMovedError(
                0,
                f"the card directory {self.path} was moved or replaced since it was loaded "
                f"(locked inode {self.identity[1]}, the path now names {'nothing' if now is None else f'inode {now[1]}'}); "
                "refusing to write, load the card again",
            )

    def release(self) -> None:
        """Give the card up (idempotent): another process, or another load, may then take it."""
        with _writers_guard:
            if self.fd < 0:
                return
            if _writers.get(self.identity) is self:
                del _writers[self.identity]
            fd, self.fd = self.fd, -1
        os.close(fd)  # closing the descriptor drops the flock


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

    The lock is a flock on the card directory itself, so taking it changes no file.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"{directory}: cannot open the card directory ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    identity = (st.st_dev, st.st_ino)
    with _writers_guard:
        other = _writers.get(identity)
        if other is not None:
            os.close(fd)
            same = "" if os.path.abspath(other.path) == os.path.abspath(directory) else f" (as {other.path})"
            raise StateError(
                f"{directory}: this card is already loaded for writing in this process{same}; use that Card, "
                "or close() it first (two copies of one card's counters could undo each other's decrements)"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CardBusyError(
                f"{directory}: the card is in use by another process (e.g. `mynaemu serve`); stop that "
                "first. `mynaemu info` works meanwhile."
            ) from None
        lock = _writers[identity] = CardLock(Path(directory), fd, identity)
    return lock


def _forget_locks_after_fork() -> None:
    # A forked child must not hold its parent's cards: close its copies of the lock descriptors
    # (the parent's own descriptors keep the locks), so the child can neither write them nor keep
    # them locked after the parent lets go. Its inherited Card objects refuse every command.
    global _writers_guard
    for lock in _writers.values():
        with contextlib.suppress(OSError):
            os.close(lock.fd)
        lock.fd = -1
    _writers.clear()
    _writers_guard = threading.RLock()  # another thread may have held it at the fork: start free


os.register_at_fork(after_in_child=_forget_locks_after_fork)
