"""Our card through pyscard → pcscd → vpcd → VpcdLink → ``mynaemu.Card``, against an independent echo card.

    MYNAEMU_BENCH_TIMED=1 python -m pytest benchmarks/test_bench_pcsc_card.py   # timed
    benchmarks/report                                                          # the table with targets

The floor is not our bridge: :class:`RawEchoCard` is a dozen lines of raw vpcd socket code (read a
frame, answer it: the ATR to get-ATR, Le zero bytes to READ BINARY, 9000 to anything else), with
the two socket options any vpcd card needs to avoid the 40 ms delayed-ACK stall (TCP_NODELAY,
TCP_QUICKACK before each recv). It runs in a thread of this process, as our link does, in slot 1;
our card (JPKI AP and EF 000A selected) is in slot 0 of the same private pcscd. One APDU goes to
each card in turn (order rotating every round) and the ratio (echo time / our time) is taken per
round. Target: >= 0.9 for SELECT EF and for READ BINARY 256 (the echo answers 256 bytes too).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_bench_pcsc as echo_bench
from interleave import interleave_many, result_of, timed

from reader_bridge.netns import NetNamespace
from reader_bridge.pcscd import PcscError, find_vpcd_readers, pcsc_context, reader_name, wait_for_card
from reader_bridge.vpcd import VPCD_PORT, VirtualReaderSet

pytestmark = pytest.mark.pcsc

# test_bench_pcsc.py's module-scoped fixtures, bound here: this module gets its own pcscd harness
# and reader set (every card is removed, and seen EMPTY, when the module ends).
pcscd_harness = echo_bench.pcscd_harness
reader_set = echo_bench.reader_set
insert_card = echo_bench.insert_card

CARD_SLOT = 0
ECHO_SLOT = 1
OK = b"\x90\x00"
ECHO_ATR = bytes.fromhex("3B80800101")
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_000A = bytes.fromhex("00A4020C02000A")
READ_256 = bytes.fromhex("00B0000000")
ROUNDS = 3000


class RawEchoCard(threading.Thread):
    """An independent minimal vpcd card on a raw socket (none of reader_bridge's link code)."""

    def __init__(self, netns: NetNamespace | None, slot: int) -> None:
        super().__init__(name="raw-echo", daemon=True)
        address = ("127.0.0.1", VPCD_PORT + slot)
        self.sock = netns.create_connection(address) if netns else socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def run(self) -> None:
        sock, buf = self.sock, b""
        with contextlib.suppress(OSError):
            while True:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                chunk = sock.recv(65537)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + (n := (buf[0] << 8) | buf[1]):
                    msg, buf = buf[2 : 2 + n], buf[2 + n :]
                    if n == 1:  # control: only get ATR (04) is answered
                        rsp = ECHO_ATR if msg[0] == 4 else b""
                    elif n == 5 and msg[1] == 0xB0:
                        rsp = bytes(msg[4] or 256) + OK
                    else:
                        rsp = OK
                    if rsp:
                        sock.sendall(len(rsp).to_bytes(2, "big") + rsp)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(5)


class Handle:
    """One shared ``SCardConnect`` handle; :meth:`transmit` returns data + SW."""

    def __init__(self, ctx: Any, reader: str) -> None:
        from smartcard import scard

        self.sc = scard
        hresult, self.handle, self.protocol = scard.SCardConnect(
            ctx, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise PcscError("SCardConnect", hresult)

    def transmit(self, apdu: bytes | list[int]) -> bytes:
        hresult, response = self.sc.SCardTransmit(self.handle, self.protocol, list(apdu))
        if hresult != self.sc.SCARD_S_SUCCESS:
            raise PcscError("SCardTransmit", hresult)
        return bytes(response)

    def sender(self, apdu: bytes):
        """A zero-argument round trip of ``apdu`` (the same shape for both cards)."""
        transmit, handle, protocol, command = self.sc.SCardTransmit, self.handle, self.protocol, list(apdu)
        return lambda: transmit(handle, protocol, command)

    def close(self) -> None:
        self.sc.SCardDisconnect(self.handle, self.sc.SCARD_LEAVE_CARD)


@pytest.fixture(scope="module")
def echo_reader(pcscd_harness) -> Iterator[str]:
    """The independent echo card in slot 1."""
    echo = RawEchoCard(pcscd_harness.netns, ECHO_SLOT)
    echo.start()
    name = reader_name(ECHO_SLOT, find_vpcd_readers())
    wait_for_card(name, present=True, timeout=10)
    yield name
    echo.close()
    wait_for_card(name, present=False, timeout=10)


@pytest.fixture(scope="module")
def our_card(bench_issued, tmp_path_factory: pytest.TempPathFactory):
    """A fresh copy of the session's benchmark card, loaded."""
    from mynaemu import Card

    dest = tmp_path_factory.mktemp("pcsc-bench") / "card"
    shutil.copytree(Path(bench_issued.path), dest)
    return Card.load(dest)


@pytest.fixture(scope="module")
def our_reader(reader_set: VirtualReaderSet, echo_reader: str, our_card) -> Iterator[str]:
    """Our card in slot 0 (beside the echo card in slot 1), JPKI AP and EF 000A selected."""
    name = insert_card(reader_set, CARD_SLOT, our_card)
    with pcsc_context() as ctx:
        holder = Handle(ctx, name)
        try:
            for apdu in (SELECT_JPKI, SELECT_000A):
                assert holder.transmit(apdu) == OK, apdu.hex()
            yield name  # the handle stays open: the card stays powered and keeps its selection
        finally:
            holder.close()


def test_our_card_against_independent_echo(our_reader: str, echo_reader: str, our_card) -> None:
    """SELECT EF and READ BINARY 256, one round trip per card in turn; target >= 0.9 each."""
    expected = our_card.dir.content["jpki.auth_cert"][:256] + OK
    with pcsc_context() as ctx:
        ours, echo = Handle(ctx, our_reader), Handle(ctx, echo_reader)
        try:
            assert ours.transmit(SELECT_000A) == OK and echo.transmit(SELECT_000A) == OK
            assert ours.transmit(READ_256) == expected and echo.transmit(READ_256) == bytes(256) + OK
            per_round, _, _ = interleave_many(
                {
                    "echo_select": echo.sender(SELECT_000A),
                    "our_select": ours.sender(SELECT_000A),
                    "echo_read": echo.sender(READ_256),
                    "our_read": ours.sender(READ_256),
                },
                rounds=ROUNDS,
                batch=1,
            )
            assert ours.transmit(READ_256) == expected
        finally:
            ours.close()
            echo.close()
    for label, key in (("PC/SC SELECT EF 000A", "select"), ("PC/SC READ BINARY 256", "read")):
        result = result_of(
            label,
            per_round[f"our_{key}"],
            per_round[f"echo_{key}"],
            floor_name="independent raw echo",
            per_s=round(1e9 / max(1.0, sorted(per_round[f"our_{key}"])[len(per_round[f"our_{key}"]) // 2])),
        )
        if timed():
            print(
                f"\n{label}: ours {result.op_ns / 1000:.1f} us, echo {result.floor_ns / 1000:.1f} us, "
                f"ratio {result.ratio:.3f} [IQR {result.q1:.3f}-{result.q3:.3f}]"
            )
    assert our_card.current_ap == "jpki"
