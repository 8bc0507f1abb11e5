"""Durable card state: retry counters and reference values, written atomically.

Every change is a whole new file: written to a temporary file in the same directory, fsynced,
renamed over the old one, and the directory fsynced. So a crash at any instant leaves either
the old state or the new one, never a mix (spec Part A.3). A state file that does not parse, has
an unknown version or belongs to another card is refused with a message naming the file; it is
never re-created, since that would reset retry counters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
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

    def __init__(self, path: Path, card_id: str) -> None:
        self.path = path
        self.card_id = card_id
        # Set by tests to simulate a crash at one of CRASH_POINTS.
        self.fault: Callable[[str], None] | None = None

    def load(self) -> dict[str, dict]:
        """Read and check the state; returns {key name: {"limit", "tries_left", "value"}}."""
        doc = read_json(self.path, STATE_FORMAT, STATE_VERSION)
        # A write cut short leaves its temporary file (partial state, PIN values included): the
        # rename never happened, so it is not the state; remove it.
        for leftover in temp_files(self.path):
            with contextlib.suppress(OSError):
                leftover.unlink()
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
