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
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from . import netns
from .netns import NamespaceError, NetNamespace, namespaces_unavailable_reason

__all__ = [
    "PCSCD_SOCKET",
    "PNP_NOTIFICATION",
    "SOCKET_ENV",
    "VPCD_FRIENDLY_NAME",
    "PcscError",
    "PcscdHarness",
    "client_socket",
    "find_pcscd",
    "find_vpcd_readers",
    "list_readers",
    "pcsc_unavailable_reason",
    "pcscd_pid",
    "pcscd_running",
    "reader_name",
    "use_private_socket",
    "wait_for_card",
]

PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
VPCD_FRIENDLY_NAME = "Virtual PCD"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READER_CONF_DIR = Path("/etc/reader.conf.d")
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"
# libpcsclite (clients only; pcscd itself always uses PCSCD_SOCKET) reads this once per process.
SOCKET_ENV = "PCSCLITE_CSOCK_NAME"
_first_socket: str | None = None  # the socket name this process's libpcsclite has settled on
_private_socket: Path | None = None


def reader_name(slot: int, readers: Sequence[str] | None = None) -> str:
    """PC/SC name of vpcd slot ``slot``: ``"Virtual PCD 00 0N"`` for 0-1 (Debian's entry),
    ``"Virtual PCD 2-3 00 00"`` for 2 and so on (the entries of ``mynaemu readers setup``).

    With ``readers`` (e.g. :func:`find_vpcd_readers`), the listed reader of that slot is
    returned instead, whatever index pcscd gave it.
    """
    from .readers import reader_name_of, slot_of

    for name in readers or ():
        if slot_of(name) == slot:
            return name
    return reader_name_of(slot)


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


def client_socket() -> Path:
    """The pcscd socket PC/SC clients of this process use (``PCSCLITE_CSOCK_NAME`` or the default)."""
    return Path(os.environ.get(SOCKET_ENV) or PCSCD_SOCKET)


def use_private_socket() -> Path:
    """This process's private pcscd socket path, exported as ``PCSCLITE_CSOCK_NAME``.

    One per process (libpcsclite reads the variable once): a fresh directory that a private
    pcscd gets bind-mounted over /run/pcscd; removed at exit. Call it before the first PC/SC
    call; afterwards it raises, since libpcsclite would keep talking to the other socket.
    """
    global _private_socket
    if _private_socket is None:
        path = Path(tempfile.mkdtemp(prefix="mynaemu-pcscd-")) / PCSCD_SOCKET.name
        if _first_socket is not None and _first_socket != str(path):
            path.parent.rmdir()
            raise RuntimeError(f"this process already uses the pcscd socket {_first_socket}; "
                               f"a private pcscd needs {SOCKET_ENV} set before the first PC/SC call")
        path.parent.chmod(0o755)  # like /run/pcscd: clients of any user may connect
        atexit.register(shutil.rmtree, path.parent, True)
        os.environ[SOCKET_ENV] = str(path)
        _private_socket = path
    return _private_socket


def pcscd_running(socket_path: Path | None = None) -> bool:
    """True when a pcscd accepts connections on its socket (a stale file does not count)."""
    return pcscd_pid(socket_path) is not None


def pcscd_pid(socket_path: Path | None = None) -> int | None:
    """Process id of the pcscd answering on ``socket_path`` (default :func:`client_socket`), or None."""
    path = str(socket_path or client_socket())
    deadline = time.monotonic() + 1.0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        while True:
            try:
                sock.connect(path)
                break
            except BlockingIOError:  # a full listen backlog (EAGAIN): pcscd is busy, not gone
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.01)
            except OSError:
                return None
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid


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
    global _first_socket
    sc = _scard()
    if _first_socket is None:
        _first_socket = str(client_socket())
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

    A pcscd it starts runs in a private network namespace (:attr:`netns`): vpcd's ports are
    reachable only by links created with that namespace (``VpcdLink(netns=...)``), never by
    another local process. With ``private_socket=True`` it also gets a private mount namespace
    with its own /run/pcscd: its socket is :func:`use_private_socket` (``PCSCLITE_CSOCK_NAME``)
    and it neither sees nor clashes with a system pcscd (the same for any other socket path set
    in ``PCSCLITE_CSOCK_NAME``: pcscd gets that directory as its /run/pcscd). A running pcscd it finds is used as
    it is; :attr:`netns` is then its namespace when that is not ours. :attr:`exposed` says why
    vpcd is reachable from our own namespace (None when it is not).

    ``reader_conf_dir`` replaces /etc/reader.conf.d for a pcscd it starts (bind-mounted over it
    in the private mount namespace), e.g. the entries of ``mynaemu readers setup --conf-dir``;
    start-up then waits until every slot they configure is listed.

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
        isolate: bool = True,
        private_socket: bool = False,
        reader_conf_dir: str | Path | None = None,
    ) -> None:
        self.pcscd = pcscd
        self.log_path = Path(log_path) if log_path is not None else None
        self.debug = debug
        self.apdu = apdu
        self.start_timeout = start_timeout
        self.isolate = isolate
        self.private_socket = private_socket
        self.reader_conf_dir = Path(reader_conf_dir) if reader_conf_dir is not None else None
        self.socket_path = use_private_socket() if private_socket else client_socket()
        self.process: subprocess.Popen[bytes] | None = None
        self.netns: NetNamespace | None = None
        self.exposed: str | None = None
        self._log: IO[bytes] | None = None

    @property
    def owned(self) -> bool:
        """True while a pcscd started by this harness is running."""
        return self.process is not None and self.process.poll() is None

    @property
    def isolated(self) -> bool:
        """True when vpcd listens in a network namespace other than ours."""
        return self.netns is not None

    def start(self) -> PcscdHarness:
        """Start pcscd unless one already answers; wait until vpcd readers are listed."""
        if not self.owned:
            pid = pcscd_pid(self.socket_path)
            if pid is not None:
                self._adopt(pid)
            else:
                self._spawn()
        self._wait_ready()
        if self.owned and self.exposed is None and self.netns is None:
            self._take_netns_of(self.process.pid)  # type: ignore[union-attr]
        return self

    def _adopt(self, pid: int) -> None:
        """Use the running pcscd ``pid``: find the network namespace its vpcd listens in."""
        try:
            ns = NetNamespace.of_process(pid)
        except NamespaceError as exc:
            self.exposed = f"pcscd (pid {pid}) was not started by mynaemu and {exc}"
            return
        if ns.is_own:
            ns.close()
            self.exposed = f"pcscd (pid {pid}) was not started by mynaemu and runs in this network namespace"
            return
        if self.netns is not None and self.netns.inode == ns.inode:
            ns.close()
        else:
            self._replace_netns(ns)
        self.exposed = None

    def _take_netns_of(self, pid: int) -> None:
        ns = NetNamespace.of_process(pid)
        if ns.is_own:  # the launcher did not move it: never pretend it is private
            ns.close()
            raise NamespaceError(0, f"pcscd (pid {pid}) is in our own network namespace")
        self._replace_netns(ns)

    def _replace_netns(self, ns: NetNamespace) -> None:
        if self.netns is not None:
            self.netns.close()
        self.netns = ns

    def _spawn(self) -> None:
        binary = self.pcscd or find_pcscd()
        if binary is None:
            raise FileNotFoundError("pcscd binary not found")
        args = [binary, "--foreground"]
        if self.debug:
            args.append("--debug")
        if self.apdu:
            args.append("--apdu")
        launcher: list[str] = []
        pass_fds: tuple[int, ...] = ()
        private_socket = self.socket_path != PCSCD_SOCKET
        reason = namespaces_unavailable_reason() if self.isolate or private_socket else "isolation is off"
        if private_socket:
            # pcscd always binds /run/pcscd/pcscd.comm: give it the socket's directory there.
            if self.socket_path.name != PCSCD_SOCKET.name:
                raise ValueError(f"{SOCKET_ENV}={self.socket_path}: pcscd can only serve a socket named {PCSCD_SOCKET.name}")
            if reason is not None:
                raise NamespaceError(0, f"cannot start pcscd on {self.socket_path}: {reason}")
            launcher += ["--bind", f"{self.socket_path.parent}:{PCSCD_SOCKET.parent}"]
        if self.reader_conf_dir is not None:
            if reason is not None:
                raise NamespaceError(0, f"cannot give pcscd the reader entries of {self.reader_conf_dir}: {reason}")
            launcher += ["--bind", f"{self.reader_conf_dir}:{READER_CONF_DIR}"]
        if self.isolate and reason is None:
            if self.netns is None:
                launcher += ["--net", "new"]
            else:  # a restart: the same namespace, so the links' handle stays valid
                launcher += ["--net", str(self.netns.fd)]
                pass_fds = (self.netns.fd,)
            self.exposed = None
        else:
            self.exposed = f"mynaemu started pcscd in this network namespace ({reason})"
        if launcher:
            # The launcher by file and with -I: it needs only the standard library, and the
            # caller's PYTHON* variables must not steer a process that runs as root.
            args = [sys.executable, "-I", netns.__file__, *launcher, "--", *args]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = out = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds)
        atexit.register(self.stop)

    def _wait_ready(self) -> None:
        """Bounded poll until PC/SC answers and lists the vpcd readers."""
        from .readers import configured_slots

        deadline = time.monotonic() + self.start_timeout
        # A pcscd we started lists every configured slot soon; one found running is as it is.
        want = max(1, configured_slots(self.reader_conf_dir or READER_CONF_DIR)) if self.process is not None else 1
        interval = 0.02
        last: Exception | None = None
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"pcscd exited with status {self.process.returncode} during start-up")
            try:
                listed = find_vpcd_readers()
                # Every configured slot (pcscd adds the entries one by one), or at least one at the end.
                if len(listed) >= want or (listed and time.monotonic() >= deadline):
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
        """Terminate the pcscd this harness started (no-op otherwise); the namespace handle stays."""
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

    def close(self) -> None:
        """Stop the pcscd this harness started and release the namespace handle."""
        self.stop()
        if self.netns is not None:
            self.netns.close()
            self.netns = None

    def kill(self) -> None:
        """SIGKILL the pcscd this harness started (a crash, for tests)."""
        if not self.owned:
            raise RuntimeError("this harness did not start the running pcscd")
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._forget()

    def restart(self) -> PcscdHarness:
        """Stop the pcscd this harness started and start a new one (in the same namespace)."""
        if not self.owned and pcscd_running(self.socket_path):
            raise RuntimeError("pcscd was started outside this harness; not restarting it")
        self.stop()
        return self.start()

    def client_env(self) -> dict[str, str]:
        """Environment for PC/SC client subprocesses of this pcscd (the socket path)."""
        return {SOCKET_ENV: str(self.socket_path)}

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
        self.close()
