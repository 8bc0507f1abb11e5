"""A per-installation pool of RSA-2048 keys generated ahead of time, so issuing a card need not wait.

Generating the six keys of a card costs 0.2-0.4 s; taking six from the pool costs well under a
millisecond. The pool is ``$MYNAEMU_DATA_DIR/keypool`` (beside the emulated authority): a 0700
directory of 0600 files, one PKCS#8 DER key each.

* **Every key serves one card.** A key is taken under an exclusive flock on the pool's lock file
  and unlinked before the lock is released, so two processes (or threads) never get the same
  key, and a taken key is never offered again, whatever happens to the card it went to.
* **Only our own files.** A pool directory that is not ours or is open to others (group/other
  permission bits), and a key file that is not a regular 0600 file of ours, are never used: a
  key planted by someone else would be a card key they know. Such a pool is passed over with a
  warning and keys are generated instead.
* **Refilled in the background.** When a take leaves fewer than ``LOW_WATER`` keys, a daemon
  thread (one per pool per process) generates keys up to ``TARGET`` (OpenSSL releases the GIL
  while it generates). ``mynaemu keypool fill N`` fills it ahead of a test run.
* **Empty is fine.** Keys missing from the pool are generated on the spot.
* ``MYNAEMU_KEYPOOL=0`` turns the pool off: every key is generated when a card is issued.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .pki import RSA_BITS, default_authority_dir, generate_rsa_key

__all__ = ["ENV", "LOW_WATER", "TARGET", "KeyPool", "default_pool_dir", "take_keys"]

log = logging.getLogger("mynaemu.keypool")

ENV = "MYNAEMU_KEYPOOL"
TARGET = 36  # six cards
LOW_WATER = 18
_SUFFIX = ".der"
_LOCK = ".lock"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a filler that died

# Held by a background filler while it is inside OpenSSL. fork() waits for it: a child forked
# while another thread holds one of OpenSSL's internal locks would hang at its next use of it.
_generation_guard = threading.Lock()


def _after_fork_in_child() -> None:
    global _generation_guard
    _generation_guard = threading.Lock()
    KeyPool._refillers.clear()


os.register_at_fork(
    before=lambda: _generation_guard.acquire(),
    after_in_parent=lambda: _generation_guard.release(),
    after_in_child=_after_fork_in_child,
)


def default_pool_dir() -> Path:
    """``$MYNAEMU_DATA_DIR/keypool`` (the same data directory as the authority's)."""
    return default_authority_dir().parent / "keypool"


def _pool_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


class KeyPool:
    """The key pool in ``directory``; see the module docstring."""

    _refillers: dict[str, threading.Thread] = {}
    _refillers_guard = threading.Lock()

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"KeyPool({str(self.directory)!r})"

    # -- the directory
    def _usable_dir(self, *, create: bool) -> bool:
        """True when the directory exists (created if asked), is ours and is closed to others."""
        if create:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                self.directory.mkdir(mode=0o700)
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log.warning("%s: not a 0700 directory of this user; not using it as a key pool", self.directory)
            return False
        return True

    def _names(self) -> list[str]:
        return [n for n in os.listdir(self.directory) if n.endswith(_SUFFIX) and not n.startswith(".")]

    def count(self) -> int:
        """Keys in the pool now (0 when the pool is absent or unusable)."""
        if not self._usable_dir(create=False):
            return 0
        return len(self._names())

    # -- taking
    def take(self, n: int, *, refill: bool = True) -> list[rsa.RSAPrivateKey]:
        """``n`` keys: from the pool as far as it has them, the rest generated now."""
        keys = self._take_from_pool(n) if _pool_enabled() else []
        if refill and _pool_enabled() and self.count() < LOW_WATER:
            self.refill_in_background()
        while len(keys) < n:
            keys.append(generate_rsa_key())
        return keys

    def _take_from_pool(self, n: int) -> list[rsa.RSAPrivateKey]:
        if not self._usable_dir(create=False):
            return []
        taken: list[bytes] = []
        lock_fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held for a listdir and a few small reads
            for name in self._names():
                if len(taken) == n:
                    break
                data = self._read_own_file(self.directory / name)
                # Unlinked before the lock goes, whether it was usable or not: never offered again.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / name)
                if data is not None:
                    taken.append(data)
        finally:
            os.close(lock_fd)  # releases the flock
        keys = []
        for data in taken:
            key = _parse_key(data)
            if key is not None:
                keys.append(key)
        return keys

    def _read_own_file(self, path: Path) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o600:
                log.warning("%s: not a 0600 file of this user; discarded", path)
                return None
            return os.read(fd, 16384)
        finally:
            os.close(fd)

    # -- filling
    def fill(self, target: int = TARGET, *, stop: threading.Event | None = None) -> int:
        """Generate keys until the pool holds at least ``target``; returns how many were added."""
        if not self._usable_dir(create=True):
            raise PermissionError(f"{self.directory}: not a 0700 directory of this user; cannot use it as a key pool")
        self._remove_stale_temporaries()
        added = 0
        while self.count() < target and not (stop is not None and stop.is_set()):
            with _generation_guard:
                self.add(generate_rsa_key())
            added += 1
        return added

    def add(self, key: rsa.RSAPrivateKey) -> None:
        """Put one key into the pool (written to a temporary name, then renamed: takers see it whole)."""
        data = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        name = secrets.token_hex(16)
        tmp = self.directory / f"{_TMP_PREFIX}{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        # No fsync: a key torn by a crash fails to parse and is discarded when taken.
        os.rename(tmp, self.directory / f"{name}{_SUFFIX}")

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for name in os.listdir(self.directory):
            if name.startswith(_TMP_PREFIX):
                path = self.directory / name
                with contextlib.suppress(OSError):
                    if now - path.lstat().st_mtime > _STALE_TMP_SECONDS:
                        path.unlink()

    def refill_in_background(self, target: int = TARGET) -> threading.Thread | None:
        """Start (once per pool in this process) a daemon thread that fills the pool to ``target``."""
        key = str(self.directory.absolute())
        with self._refillers_guard:
            running = self._refillers.get(key)
            if running is not None and running.is_alive():
                return running
            thread = threading.Thread(target=self._refill, args=(target,), name="mynaemu-keypool", daemon=True)
            self._refillers[key] = thread
            thread.start()
            return thread

    def _refill(self, target: int) -> None:
        try:
            self.fill(target)
        except OSError as exc:  # a full or read-only disk: cards are then issued with fresh keys
            log.warning("%s: cannot refill the key pool (%s)", self.directory, exc)


def _parse_key(data: bytes) -> rsa.RSAPrivateKey | None:
    try:
        # Our own files, generated by OpenSSL here: its consistency check (~25 ms) adds nothing.
        key = serialization.load_der_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):
        log.warning("a key in the pool did not parse (torn by a crash?); discarded")
        return None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != RSA_BITS:
        return None
    return key


def take_keys(n: int, directory: Path | str | None = None) -> list[rsa.RSAPrivateKey]:
    """``n`` fresh keys for one card: from the pool in ``directory`` (default: the installation's)."""
    return KeyPool(directory if directory is not None else default_pool_dir()).take(n)
