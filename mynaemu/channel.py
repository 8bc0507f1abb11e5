"""The control channel of a served card: a Unix socket carrying JSON lines.

``mynaemu serve`` listens on ``CARD_DIR/.run/control.sock`` (the directory 0700, the socket 0600)
for each card it serves; ``mynaemu ctl``, ``admin``, ``send`` and ``run`` reach the served card
through it (the serving process is the card's one writer, so it does the writes). Each line is a
request ``{"op": ...}`` (see ``mynaemu.controls``); each answer is one line, ``{"ok": true, ...}``
or ``{"ok": false, "error": "..."}``.

Only local, only us: the server checks every client's uid with SO_PEERCRED and refuses any other
than its own; the client checks that the server is its own user (or root). A line that is not a
JSON object, or longer than ``MAX_LINE``, gets a one-line error and changes nothing. Requests are
never logged (a reset-pin request holds the new PIN).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("mynaemu.channel")

RUN_DIR = ".run"
SOCKET_NAME = "control.sock"
MAX_LINE = 512 * 1024  # a transmit of the largest extended APDU, in hex, fits
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


class ChannelError(Exception):
    """The control channel cannot be used (not served, a broken answer, another user's socket)."""


def socket_path(card_dir: Path | str) -> Path:
    """Where the control socket of the card in ``card_dir`` is while it is served."""
    return Path(card_dir) / RUN_DIR / SOCKET_NAME


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _short_address(path: Path, dir_fd: int) -> str:
    """``path`` as a socket address; through ``/proc/self/fd`` when it is longer than sun_path allows."""
    text = str(path)
    if len(os.fsencode(text)) <= _UNIX_PATH_MAX:
        return text
    return f"/proc/self/fd/{dir_fd}/{path.name}"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("duplicate key")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_line(line: bytes) -> dict[str, Any]:
    """One request or answer line as a JSON object; ValueError (one line) otherwise."""
    try:
        doc = json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("not a JSON object (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a JSON object (malformed JSON)") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def encode_line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _LineReader:
    """Bounded line reads from a socket: an oversized line is reported, skipped, and reading goes on."""

    def __init__(self, sock: socket.socket, limit: int = MAX_LINE) -> None:
        self.sock = sock
        self.limit = limit
        self.buf = bytearray()

    def read(self) -> bytes | None:
        """The next line without its newline, None at EOF; OverflowError for an oversized line (then skipped)."""
        skipping = False
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                if skipping or len(line) > self.limit:
                    raise OverflowError
                return line
            if len(self.buf) > self.limit:
                self.buf.clear()
                skipping = True
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk


class ControlServer:
    """Serves ``handler(request) -> answer`` on the card's control socket until :meth:`close`."""

    def __init__(self, card_dir: Path | str, handler: Callable[[object], dict[str, Any]]) -> None:
        self.path = socket_path(card_dir)
        self.handler = handler
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        """Create the run directory (0700) and the socket (0600), and accept clients in a thread.

        Any socket left there is stale: the caller holds the card's writer lock, so no other
        process serves this card.
        """
        run_dir = self.path.parent
        with contextlib.suppress(FileExistsError):
            os.mkdir(run_dir, 0o700)
        dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(dir_fd)
            if st.st_uid != os.geteuid():
                raise PermissionError(1, "the run directory belongs to another user", str(run_dir))
            os.fchmod(dir_fd, 0o700)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path.name, dir_fd=dir_fd)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind(_short_address(self.path, dir_fd))
                os.chmod(self.path.name, 0o600, dir_fd=dir_fd, follow_symlinks=False)
                sst = os.stat(self.path.name, dir_fd=dir_fd, follow_symlinks=False)
                self._identity = (sst.st_dev, sst.st_ino)
                sock.listen(16)
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(dir_fd)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control-accept", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve_client, args=(conn,), name="control-client", daemon=True).start()

    def _serve_client(self, conn: socket.socket) -> None:
        with conn:
            try:
                uid = peer_uid(conn)
                if uid != os.geteuid():
                    log.warning("control socket: refused a client of uid %d", uid)
                    # Take its first request (unlooked-at) before answering: a client that writes
                    # first then reads gets the refusal, not a broken pipe.
                    conn.settimeout(1.0)
                    with contextlib.suppress(OSError, OverflowError):
                        _LineReader(conn, limit=4096).read()
                    conn.sendall(encode_line({"ok": False, "error": f"refused: this card is served by uid "
                                                                  f"{os.geteuid()}, not yours ({uid})", "kind": "refused"}))
                    return
                with self._lock:
                    if self._closed.is_set():
                        return
                    self._clients.add(conn)
                reader = _LineReader(conn)
                while True:
                    try:
                        line = reader.read()
                    except OverflowError:
                        conn.sendall(encode_line({"ok": False, "error": f"request line longer than {MAX_LINE} bytes; "
                                                                        "nothing was done", "kind": "refused"}))
                        continue
                    if line is None:
                        return
                    if not line.strip():
                        continue
                    try:
                        request: object = decode_line(line)
                    except ValueError as exc:
                        answer = {"ok": False, "error": f"{exc}; nothing was done", "kind": "refused"}
                    else:
                        answer = self.handler(request)
                    conn.sendall(encode_line(answer))
            except OSError:
                return  # the client went away
            finally:
                with self._lock:
                    self._clients.discard(conn)

    def close(self) -> None:
        """Stop listening, end every client's connection and remove the socket (if it is still ours)."""
        with self._lock:
            self._closed.set()
            clients = list(self._clients)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._identity and stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlClient:
    """A connection to a served card's control socket; :meth:`request` sends one request."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path
        self._reader = _LineReader(sock, limit=16 * MAX_LINE)

    @classmethod
    def connect(cls, card_dir: Path | str, *, timeout: float = 30.0) -> ControlClient | None:
        """Connect to the card's serve; None when it is not served (no socket, or a stale one).

        ChannelError when the socket is another user's, or cannot be reached for another reason.
        """
        path = socket_path(card_dir)
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ChannelError(f"{path.parent}: cannot be opened ({exc.strerror or exc})") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(_short_address(path, dir_fd))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise ChannelError(f"{path}: cannot connect ({exc.strerror or exc})") from None
        finally:
            os.close(dir_fd)
        server = peer_uid(sock)
        if server not in (os.geteuid(), 0):
            sock.close()
            raise ChannelError(f"{path}: the socket is served by uid {server}, not by you; not using it")
        return cls(sock, path)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}``; the answer (``ok`` true or false). ChannelError when the channel breaks."""
        try:
            self.sock.sendall(encode_line({"op": op, **fields}))
            line = self._reader.read()
        except TimeoutError:
            raise ChannelError(f"{self.path}: no answer from the serving process") from None
        except OverflowError:
            raise ChannelError(f"{self.path}: the answer is too long") from None
        except OSError as exc:
            raise ChannelError(f"{self.path}: the serving process went away ({exc.strerror or exc})") from None
        if line is None:
            raise ChannelError(f"{self.path}: the serving process closed the channel")
        try:
            answer = decode_line(line)
        except ValueError as exc:
            raise ChannelError(f"{self.path}: answer is {exc}") from None
        if not isinstance(answer.get("ok"), bool):
            raise ChannelError(f"{self.path}: answer has no ok field")
        return answer

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
