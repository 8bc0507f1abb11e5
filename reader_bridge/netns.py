"""Private Linux network (and mount) namespaces: a vpcd port that no other process can reach.

Debian's vpcd listens on 0.0.0.0:35963+slot, and it serves whichever process connected first
(the next one waits in its accept queue). A pcscd started in a network namespace of its own has
a loopback nobody else can reach; the bridge creates its vpcd socket inside that namespace
(:meth:`NetNamespace.create_connection`: a short-lived thread joins it with ``setns`` — network
namespaces are per thread — connects and exits; the socket stays there). PC/SC clients still
reach pcscd through its Unix socket, which is a file and is not bound to a network namespace.

Run as a program, this module is the launcher for such processes (root only)::

    python -m reader_bridge.netns [--net new|FD|PATH] [--bind SRC:DST]... [--user NAME] -- CMD ...

``--net new`` unshares a fresh network namespace and brings ``lo`` up; ``--net FD`` or a
``/proc/PID/ns/net`` path joins an existing one. ``--bind`` unshares a private mount namespace
(propagation private, so nothing leaks back) and bind-mounts SRC over DST (e.g. a private
directory over /run/pcscd: pcscd's socket and pid file are then not the system's).
``--user`` drops to that user before exec. Python 3.11 has no ``os.setns``/``os.unshare``:
libc is called through ctypes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import fcntl
import os
import pwd
import socket
import struct
import sys
import threading
from pathlib import Path

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "NamespaceError",
    "NetNamespace",
    "namespaces_unavailable_reason",
    "own_netns_inode",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH22x")

# Set to 0 to behave as if namespaces could not be used (no privileges): the fallback path.
NETNS_ENV = "MYNAEMU_NETNS"


class NamespaceError(OSError):
    """A namespace could not be created, joined or used."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace open as ``fd``."""
    _check(_libc().setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    """Give the calling thread new namespaces of the kinds in ``flags``."""
    _check(_libc().unshare(flags), "unshare")


def own_netns_inode() -> int:
    """Inode of the calling thread's network namespace (equal inodes: same namespace)."""
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


def loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's network namespace (down in a new one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name = b"lo"
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(name, 0)))
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(name, flags | _IFF_UP))


def _in_thread(fn: object) -> object:
    """Run ``fn`` in a throwaway thread (its namespace changes die with it); returns or raises its result."""
    box: list[object] = []

    def work() -> None:
        try:
            box.append(fn())  # type: ignore[operator]
        except BaseException as exc:
            box.append(exc)

    worker = threading.Thread(target=work, name="netns", daemon=True)
    worker.start()
    worker.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def namespaces_unavailable_reason() -> str | None:
    """Why private network namespaces cannot be used here, or None when they can.

    Probes for real (a throwaway thread unshares one); ``MYNAEMU_NETNS=0`` makes it answer as
    if there were no privileges, to exercise the fallback.
    """
    if os.environ.get(NETNS_ENV) == "0":
        return f"{NETNS_ENV}=0 is set"
    if not Path("/proc/self/ns/net").exists():
        return "no network namespaces (/proc/self/ns/net missing)"

    def probe() -> None:
        unshare(CLONE_NEWNET)
        loopback_up()

    try:
        _in_thread(probe)
    except OSError as exc:
        return f"cannot create a network namespace ({exc.strerror or exc}; needs root or CAP_SYS_ADMIN)"
    return None


class NetNamespace:
    """An open handle on a network namespace; it lives as long as the handle or a process in it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.inode = os.fstat(fd).st_ino

    @classmethod
    def of_process(cls, pid: int) -> NetNamespace:
        """The network namespace process ``pid`` is in."""
        try:
            return cls(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            raise NamespaceError(exc.errno, f"cannot open the network namespace of pid {pid}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"NetNamespace(net:[{self.inode}])"

    @property
    def fd(self) -> int:
        """The open namespace file descriptor (for ``pass_fds``); raises once closed."""
        if self._fd < 0:
            raise NamespaceError(0, "network namespace handle is closed")
        return self._fd

    @property
    def is_own(self) -> bool:
        """True when this is the calling thread's own namespace (nothing private about it)."""
        return self.inode == own_netns_inode()

    def create_connection(self, address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        """``socket.create_connection`` from inside this namespace (the socket stays in it)."""
        fd = self.fd

        def connect() -> socket.socket:
            setns(fd, CLONE_NEWNET)
            return socket.create_connection(address, timeout=timeout)

        sock = _in_thread(connect)
        assert isinstance(sock, socket.socket)
        return sock

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- the launcher -------------------------------------------------------------------------------


def _enter_net(spec: str) -> None:
    if spec == "new":
        unshare(CLONE_NEWNET)
        loopback_up()
        return
    fd = int(spec) if spec.isdigit() else os.open(spec, os.O_RDONLY | os.O_CLOEXEC)
    setns(fd, CLONE_NEWNET)
    os.close(fd)


def _bind_mounts(binds: list[str]) -> None:
    libc = _libc()
    unshare(CLONE_NEWNS)
    # Private propagation first: our bind mounts must not show up in the parent namespace.
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    for spec in binds:
        src, _, dst = spec.partition(":")
        Path(dst).mkdir(parents=True, exist_ok=True)  # e.g. /run/pcscd before the first pcscd ran
        _check(libc.mount(src.encode(), dst.encode(), None, _MS_BIND, None), f"mount --bind {src} {dst}")


def _drop_to(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reader_bridge.netns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", help="'new', an inherited namespace fd, or a /proc/PID/ns/net path")
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST", help="bind mount in a private mount namespace")
    parser.add_argument("--user", help="run the command as this user")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    try:
        if args.bind:
            _bind_mounts(args.bind)
        if args.net:
            _enter_net(args.net)
        if args.user:
            _drop_to(args.user)
    except (OSError, KeyError) as exc:
        print(f"reader_bridge.netns: {exc}", file=sys.stderr)
        return 125
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"reader_bridge.netns: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
