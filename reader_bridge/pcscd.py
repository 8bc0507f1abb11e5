"""Start, watch and query pcscd (with vsmartcard's vpcd driver) through pyscard.

pyscard is imported lazily: importing this module never needs it, the helpers that talk
PC/SC do. Card presence is awaited with ``SCardGetStatusChange``; only the daemon start-up
wait polls (bounded).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

__all__ = [
    "PCSCD_SOCKET",
    "PNP_NOTIFICATION",
    "VPCD_FRIENDLY_NAME",
    "PcscError",
    "PcscdHarness",
    "find_pcscd",
    "find_vpcd_readers",
    "list_readers",
    "pcsc_unavailable_reason",
    "pcscd_running",
    "reader_name",
    "wait_for_card",
]

PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
VPCD_FRIENDLY_NAME = "Virtual PCD"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"


def reader_name(slot: int, readers: Sequence[str] | None = None) -> str:
    """PC/SC name of vpcd slot ``slot``: ``"Virtual PCD 00 0N"`` on Debian 12.

    With ``readers`` (e.g. :func:`find_vpcd_readers`), the listed reader of that slot is
    returned instead, whatever index pcscd gave it.
    """
    suffix = f" {slot:02d}"
    for name in readers or ():
        if name.startswith(VPCD_FRIENDLY_NAME) and name.endswith(suffix):
            return name
    return f"{VPCD_FRIENDLY_NAME} 00{suffix}"


def find_pcscd() -> str | None:
    """Path of the pcscd binary (also looks in sbin directories missing from PATH)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin:/sbin"
    return shutil.which("pcscd", path=path)


def pcsc_unavailable_reason() -> str | None:
    """Why the real PC/SC stack cannot be used here, or None when it can."""
    if find_pcscd() is None:
        return "pcscd binary not found (apt-get install pcscd vsmartcard-vpcd)"
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        return "pyscard not installed (pip install pyscard)"
    if not VPCD_DRIVER.exists():
        return f"vsmartcard vpcd driver {VPCD_DRIVER} missing (apt-get install vsmartcard-vpcd)"
    return None


def pcscd_running(socket_path: Path = PCSCD_SOCKET) -> bool:
    """True when a pcscd accepts connections on its socket (a stale file does not count)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(socket_path))
        except OSError:
            return False
    return True


def _scard() -> ModuleType:
    from smartcard import scard

    return scard


class PcscError(RuntimeError):
    """A PC/SC call failed; ``hresult`` holds the code."""

    def __init__(self, what: str, hresult: int) -> None:
        sc = _scard()
        super().__init__(f"{what}: {sc.SCardGetErrorMessage(hresult)} (0x{hresult & 0xFFFFFFFF:08X})")
        self.hresult = hresult


@contextlib.contextmanager
def pcsc_context() -> Iterator[Any]:
    """A fresh PC/SC context, released on exit."""
    sc = _scard()
    hresult, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
    if hresult != sc.SCARD_S_SUCCESS:
        raise PcscError("SCardEstablishContext", hresult)
    try:
        yield ctx
    finally:
        sc.SCardReleaseContext(ctx)


def list_readers() -> list[str]:
    """All PC/SC readers (empty when there are none)."""
    sc = _scard()
    with pcsc_context() as ctx:
        hresult, readers = sc.SCardListReaders(ctx, [])
    if hresult == sc.SCARD_E_NO_READERS_AVAILABLE:
        return []
    if hresult != sc.SCARD_S_SUCCESS:
        raise PcscError("SCardListReaders", hresult)
    return list(readers)


def find_vpcd_readers() -> list[str]:
    """The vpcd readers pcscd lists, e.g. ``["Virtual PCD 00 00", "Virtual PCD 00 01"]``."""
    return [r for r in list_readers() if r.startswith(VPCD_FRIENDLY_NAME)]


def wait_for_card(reader: str, present: bool = True, timeout: float = 10.0) -> bytes:
    """Block in ``SCardGetStatusChange`` until ``reader`` holds a card (or is empty).

    Returns the ATR (``b""`` when waiting for empty); raises TimeoutError. A reader that
    does not exist yet is waited for through the PnP notification pseudo-reader.
    """
    sc = _scard()
    changed = sc.SCARD_STATE_CHANGED
    deadline = time.monotonic() + timeout
    state = pnp_state = sc.SCARD_STATE_UNAWARE
    with pcsc_context() as ctx:
        while (remaining_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            hresult, result = sc.SCardGetStatusChange(ctx, remaining_ms, [(reader, state)])
            if hresult == sc.SCARD_E_UNKNOWN_READER:
                # Not listed (yet): wait for the reader list to change. The first call with
                # an unaware PnP state only records the current list and returns at once.
                hresult, result = sc.SCardGetStatusChange(ctx, remaining_ms, [(PNP_NOTIFICATION, pnp_state)])
                if hresult == sc.SCARD_E_TIMEOUT:
                    break
                if hresult != sc.SCARD_S_SUCCESS:
                    raise PcscError("SCardGetStatusChange", hresult)
                pnp_state = result[0][1] & ~changed
                state = sc.SCARD_STATE_UNAWARE
                continue
            if hresult == sc.SCARD_E_TIMEOUT:
                break
            if hresult != sc.SCARD_S_SUCCESS:
                raise PcscError("SCardGetStatusChange", hresult)
            _, event, atr = result[0]
            if present and event & sc.SCARD_STATE_PRESENT and not event & sc.SCARD_STATE_MUTE:
                return bytes(atr)
            if not present and event & sc.SCARD_STATE_EMPTY:
                return b""
            state = event & ~changed
    what = "a card" if present else "no card"
    raise TimeoutError(f"{reader!r} did not show {what} within {timeout} s")


class PcscdHarness:
    """Makes sure pcscd runs with its vpcd readers; stops only a pcscd it started itself.

    Never passes ``--auto-exit``. ``debug``/``apdu`` add pcscd's ``--debug``/``--apdu`` output
    to ``log_path`` (beware: ``--apdu`` logs PINs in clear).
    """

    def __init__(
        self,
        *,
        pcscd: str | None = None,
        log_path: str | Path | None = None,
        debug: bool = False,
        apdu: bool = False,
        start_timeout: float = 10.0,
    ) -> None:
        self.pcscd = pcscd
        self.log_path = Path(log_path) if log_path is not None else None
        self.debug = debug
        self.apdu = apdu
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def owned(self) -> bool:
        """True while a pcscd started by this harness is running."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> PcscdHarness:
        """Start pcscd unless one already answers; wait until vpcd readers are listed."""
        if not self.owned and not pcscd_running():
            self._spawn()
        self._wait_ready()
        return self

    def _spawn(self) -> None:
        binary = self.pcscd or find_pcscd()
        if binary is None:
            raise FileNotFoundError("pcscd binary not found")
        args = [binary, "--foreground"]
        if self.debug:
            args.append("--debug")
        if self.apdu:
            args.append("--apdu")
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = out = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        atexit.register(self.stop)

    def _wait_ready(self) -> None:
        """Bounded poll until PC/SC answers and lists the vpcd readers."""
        deadline = time.monotonic() + self.start_timeout
        interval = 0.02
        last: Exception | None = None
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"pcscd exited with status {self.process.returncode} during start-up")
            try:
                if find_vpcd_readers():
                    return
                last = None
            except PcscError as exc:
                last = exc
            if time.monotonic() >= deadline:
                detail = f": {last}" if last else " (no 'Virtual PCD' reader; is vsmartcard-vpcd installed?)"
                raise TimeoutError(f"pcscd not ready within {self.start_timeout} s{detail}")
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(interval)
            else:
                time.sleep(interval)
            interval = min(interval * 2, 0.2)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the pcscd this harness started (no-op otherwise)."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._forget()

    def kill(self) -> None:
        """SIGKILL the pcscd this harness started (a crash, for tests)."""
        if not self.owned:
            raise RuntimeError("this harness did not start the running pcscd")
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._forget()

    def restart(self) -> PcscdHarness:
        """Stop the pcscd this harness started and start a new one."""
        if not self.owned and pcscd_running():
            raise RuntimeError("pcscd was started outside this harness; not restarting it")
        self.stop()
        return self.start()

    def _forget(self) -> None:
        self.process = None
        atexit.unregister(self.stop)
        if self._log is not None:
            self._log.close()
            self._log = None

    def readers(self) -> list[str]:
        """The vpcd readers now listed."""
        return find_vpcd_readers()

    def __enter__(self) -> PcscdHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
