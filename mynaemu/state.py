"""Durable card state: retry counters and reference values, written atomically.

Every change is a whole new file: written to a temporary file in the same directory, fsynced,
renamed over the old one, and the directory fsynced. So a crash at any instant leaves either
the old state or the new one, never a mix (spec Part A.3). A state file that does not parse, has
an unknown version or belongs to another card is refused with a message naming the file; it is
never re-created, since that would reset retry counters.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
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


class StateError(Exception):
    """A state file that cannot be trusted; the message names the file and what is wrong."""


def temp_files(path: Path) -> list[Path]:
    """Temporary files an interrupted ``atomic_write`` of ``path`` may have left behind."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, fault: Callable[[str], None] | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, whole."""
    if fault:
        fault("open")
    # A fresh random name, created exclusively: a file or link planted in the directory is never
    # written through.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask; a key file must end up 0600
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fault:
            fault("written")
        os.fsync(fd)
    except Exception:  # e.g. disk full: free the space now (a crash's leftover goes at next load)
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    if fault:
        fault("synced")
    os.replace(tmp, path)
    if fault:
        fault("renamed")
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if fault:
        fault("dir_synced")


def read_json(path: Path, expected_format: str, expected_version: int) -> dict:
    """Load one of the card's JSON files, refusing anything malformed with a clear message."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device would block or never end; a directory cannot be state.
            raise StateError(f"{path}: not a regular file; refusing to read it")
        if st.st_mode & 0o077 and path.name in PRIVATE_FILES:
            log.warning("%s: readable by other users (mode %o); it holds secrets, chmod 600 it", path, st.st_mode & 0o777)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path}: missing; the card directory is incomplete (re-issue the card)") from None
    except PermissionError:
        raise StateError(f"{path}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise StateError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(
            f"{path}: corrupt or truncated ({exc.__class__.__name__}); refusing to use it. "
            "Restore it from a backup or re-issue the card; it is never re-created silently, "
            "because that would reset the retry counters."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != expected_format:
        raise StateError(f"{path}: not a {expected_format} file")
    if doc.get("version") != expected_version:
        raise StateError(
            f"{path}: unknown {expected_format} version {doc.get('version')!r} (this mynaemu reads version {expected_version})"
        )
    return doc


class StateStore:
    """The file ``state.json`` of one card: counters and reference values per key name."""

    def __init__(self, path: Path, card_id: str, *, read_only: bool = False) -> None:
        self.path = path
        self.card_id = card_id
        self.read_only = read_only
        # Set by tests to simulate a crash at one of CRASH_POINTS.
        self.fault: Callable[[str], None] | None = None

    def load(self) -> dict[str, dict]:
        """Read and check the state; returns {key name: {"limit", "tries_left", "value"}}."""
        doc = read_json(self.path, STATE_FORMAT, STATE_VERSION)
        if self.read_only:
            return self._keys(doc)
        # A write cut short leaves its temporary file (partial state, PIN values included): the
        # rename never happened, so it is not the state; remove it.
        for leftover in temp_files(self.path):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return self._keys(doc)

    def _keys(self, doc: dict) -> dict[str, dict]:
        if doc.get("card_id") != self.card_id:
            raise StateError(
                f"{self.path}: belongs to card {doc.get('card_id')!r}, not to this card {self.card_id!r}"
            )
        keys = doc.get("keys")
        if not isinstance(keys, dict):
            raise StateError(f"{self.path}: has no 'keys' table")
        out: dict[str, dict] = {}
        for name, k in keys.items():
            try:
                limit, tries, value = int(k["limit"]), int(k["tries_left"]), bytes.fromhex(k["value"])
            except (KeyError, TypeError, ValueError):
                raise StateError(f"{self.path}: key {name!r} is malformed") from None
            if not (1 <= limit <= 15 and 0 <= tries <= limit):
                raise StateError(f"{self.path}: key {name!r} has tries_left {tries} outside 0..{limit}")
            out[name] = {"limit": limit, "tries_left": tries, "value": value}
        return out

    def save(self, keys: dict[str, dict]) -> None:
        """Write the whole state durably (see module doc)."""
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
        # slower): this write is on the wrong-VERIFY path.
        atomic_write(self.path, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), fault=self.fault)


# -- one writer per card -------------------------------------------------------------------------
# Two processes that both held a card's counters in memory could each write their own view, and
# the later write would undo the other's decrement: an extra PIN try. So a process that may write
# a card's state holds an exclusive flock on the card directory. Within one process the lock is shared
# (reference-counted), so several Card objects of one directory can coexist, e.g. in tests.
_held: dict[str, list[int]] = {}  # real path -> [fd, users]
_held_guard = threading.Lock()


def acquire_card_lock(directory: Path) -> Callable[[], None]:
    """Take the card's writer lock for this process; returns the function that releases it.

    The lock is a flock on the card directory itself, so taking it changes no file.
    """
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            try:
                fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise StateError(f"{directory}: cannot open the card directory ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StateError(
                    f"{directory}: the card is in use by another process (e.g. `mynaemu serve`); stop that "
                    "first. `mynaemu info` works meanwhile."
                ) from None
            entry = _held[key] = [fd, 0]
        entry[1] += 1

    released = False

    def release() -> None:
        nonlocal released
        with _held_guard:
            if released:
                return
            released = True
            entry[1] -= 1
            if entry[1] == 0 and _held.get(key) is entry:
                del _held[key]
                os.close(entry[0])  # closing the descriptor drops the flock

    return release


def _forget_locks_after_fork() -> None:
    # A forked child must not hold its parent's cards: close its copies of the lock descriptors
    # (the parent's own descriptors keep the locks), so the child can neither write them nor keep
    # them locked after the parent lets go.
    for fd, _users in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks_after_fork)
