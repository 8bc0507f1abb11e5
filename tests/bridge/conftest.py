"""Fixtures for the PC/SC bridge tests: a tiny canned card, a real pcscd, reader slots.

The session's pcscd is private: its own network namespace (only our links reach vpcd) and
its own mount namespace with a private /run/pcscd, so it never meets a system pcscd or another
engineer's. Its socket is exported as ``PCSCLITE_CSOCK_NAME`` at import, before any PC/SC call
(libpcsclite reads it once); subprocesses (``mynaemu serve``, OpenSC, pcsc_scan) inherit it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from reader_bridge.netns import namespaces_unavailable_reason
from reader_bridge.pcscd import (
    PcscdHarness,
    find_vpcd_readers,
    pcsc_unavailable_reason,
    reader_name,
    use_private_socket,
    wait_for_card,
)
from reader_bridge.vpcd import VirtualReaderSet

CANNED_ATR = bytes.fromhex("3BE000FF8131FE4514")
PRIVATE_SOCKET = use_private_socket()


class CannedCard:
    """Answers from a dict of APDU → response; counts calls; can be told to raise.

    ``selects`` maps an APDU to the AP name it selects (for traces); ``handler`` answers
    APDUs missing from ``answers`` (default ``6D00``).
    """

    def __init__(
        self,
        answers: dict[bytes, bytes] | None = None,
        *,
        atr: bytes = CANNED_ATR,
        selects: dict[bytes, str] | None = None,
        raise_on: set[bytes] | None = None,
        handler: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.answers = answers or {}
        self.selects = selects or {}
        self.raise_on = raise_on or set()
        self.handler = handler
        self._atr = atr
        self.calls: Counter[str] = Counter()
        self.apdus: list[bytes] = []
        self.current_ap: str | None = None
        self.lock = threading.Lock()

    @property
    def atr(self) -> bytes:
        return self._atr

    def power_on(self) -> bytes:
        self.calls["power_on"] += 1
        self.current_ap = None
        return self._atr

    def reset(self) -> bytes:
        self.calls["reset"] += 1
        self.current_ap = None
        return self._atr

    def power_off(self) -> None:
        self.calls["power_off"] += 1
        self.current_ap = None

    def transmit(self, apdu: bytes) -> bytes:
        self.calls["transmit"] += 1
        self.apdus.append(apdu)
        if apdu in self.raise_on:
            raise RuntimeError("card bug on purpose")
        if apdu in self.selects:
            self.current_ap = self.selects[apdu]
        if apdu in self.answers:
            return self.answers[apdu]
        if self.handler is not None:
            return self.handler(apdu)
        return b"\x6d\x00"


@pytest.fixture
def canned_card() -> Callable[..., CannedCard]:
    """Factory for :class:`CannedCard`."""
    return CannedCard


class FakeVpcd:
    """A vpcd stand-in on loopback: accepts the link and speaks the framing by hand."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port: int = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn
        return conn

    def send(self, payload: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(len(payload).to_bytes(2, "big") + payload)

    def _recv_exact(self, n: int) -> bytes:
        assert self.conn is not None
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def recv(self) -> bytes:
        return self._recv_exact(int.from_bytes(self._recv_exact(2), "big"))

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def fake_vpcd() -> Iterator[FakeVpcd]:
    server = FakeVpcd()
    yield server
    server.close()


# -- real pcscd ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pcscd() -> Iterator[PcscdHarness]:
    """This session's private pcscd with vpcd readers (see the module docstring)."""
    reason = pcsc_unavailable_reason() or namespaces_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)
    harness = PcscdHarness(private_socket=True)
    harness.start()
    assert harness.isolated and harness.socket_path == PRIVATE_SOCKET
    yield harness
    harness.close()


class Slots:
    """Inserts cards into vpcd slots and, at teardown, removes them and waits for EMPTY."""

    def __init__(self, readers: VirtualReaderSet) -> None:
        self.readers = readers

    def insert(self, slot: int, card: object) -> str:
        """Insert and wait until PC/SC shows the card; returns the reader name."""
        self.readers.insert(slot, card)  # type: ignore[arg-type]
        name = reader_name(slot, find_vpcd_readers())
        wait_for_card(name, present=True, timeout=10)
        return name

    def remove(self, slot: int) -> None:
        """Remove and wait until PC/SC shows the slot empty."""
        self.readers.remove(slot)
        wait_for_card(reader_name(slot, find_vpcd_readers()), present=False, timeout=10)

    def close(self) -> None:
        for slot in list(self.readers.links):
            with contextlib.suppress(Exception):
                self.remove(slot)


@pytest.fixture
def make_slots(pcscd: PcscdHarness) -> Iterator[Callable[..., Slots]]:
    """Factory of :class:`Slots` (keyword arguments go to VirtualReaderSet); all closed at teardown."""
    made: list[Slots] = []

    def _make(**options: object) -> Slots:
        made.append(Slots(VirtualReaderSet(netns=pcscd.netns, **options)))  # type: ignore[arg-type]
        return made[-1]

    yield _make
    for s in made:
        s.close()


@pytest.fixture
def slots(make_slots: Callable[..., Slots]) -> Slots:
    """Empty vpcd slots with the default options."""
    return make_slots()


@pytest.fixture
def connect() -> Iterator[Callable[[str], object]]:
    """Open pyscard connections by reader name; all are released at teardown."""
    from smartcard.System import readers

    opened: list[object] = []

    def _connect(name: str) -> object:
        (reader,) = [r for r in readers() if str(r) == name]
        conn = reader.createConnection()
        conn.connect()
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        with contextlib.suppress(Exception):
            conn.release()  # type: ignore[attr-defined]
