"""APDU round trips per second through pyscard → pcscd → vpcd → VpcdLink → card.

Run: ``python -m pytest benchmarks/test_bench_pcsc.py --benchmark-enable``. The echo card on
slot 1 is the transport floor; to measure another card beside it, insert it with
:func:`insert_card` into the module's ``reader_set`` and call :func:`bench_roundtrip`::

    @pytest.fixture(scope="module")
    def our_reader(reader_set):
        return insert_card(reader_set, 0, Card.load(CARD_DIR))

    def test_our_card_roundtrips(benchmark, our_reader):
        assert bench_roundtrip(benchmark, our_reader, SELECT_JPKI_AP) == b"\\x90\\x00"
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from reader_bridge import CardLike
from reader_bridge.echo import EchoCard
from reader_bridge.pcscd import (
    PcscdHarness,
    PcscError,
    find_vpcd_readers,
    pcsc_context,
    pcsc_unavailable_reason,
    reader_name,
    use_private_socket,
    wait_for_card,
)
from reader_bridge.vpcd import VirtualReaderSet

# A private pcscd (own network and mount namespaces), as in tests/bridge/conftest.py: its socket
# must be exported before this process's first PC/SC call. The same one per process.
use_private_socket()

pytestmark = pytest.mark.pcsc

ECHO_SLOT = 1
ECHO_APDU = bytes.fromhex("00A4040C0AD392F000260100000001")


@pytest.fixture(scope="module")
def pcscd_harness() -> Iterator[PcscdHarness]:
    """The process's private pcscd with its vpcd readers (started here unless it runs already)."""
    from reader_bridge.netns import namespaces_unavailable_reason

    reason = pcsc_unavailable_reason() or namespaces_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)
    with PcscdHarness(private_socket=True) as harness:
        yield harness


@pytest.fixture(scope="module")
def reader_set(pcscd_harness: PcscdHarness) -> Iterator[VirtualReaderSet]:
    """The module's vpcd slots; every card is removed (and seen EMPTY) at the end."""
    readers = VirtualReaderSet(netns=pcscd_harness.netns)
    yield readers
    slots = list(readers.links)
    readers.close()
    listed = find_vpcd_readers()
    for slot in slots:
        wait_for_card(reader_name(slot, listed), present=False, timeout=10)


def insert_card(readers: VirtualReaderSet, slot: int, card: CardLike) -> str:
    """Insert ``card`` and wait until PC/SC shows it; returns the reader name."""
    readers.insert(slot, card)
    name = reader_name(slot, find_vpcd_readers())
    wait_for_card(name, present=True, timeout=10)
    return name


@pytest.fixture(scope="module")
def echo_reader(reader_set: VirtualReaderSet) -> str:
    """Reader name of the echo card on slot 1."""
    return insert_card(reader_set, ECHO_SLOT, EchoCard())


def bench_roundtrip(benchmark, reader_name: str, apdu: bytes) -> bytes:
    """Benchmark one ``SCardTransmit`` of ``apdu`` on ``reader_name``; returns the last response.

    Uses pyscard's thin ``smartcard.scard`` layer on one shared connection, so the number is
    the PC/SC transport plus the card, not pyscard's observer machinery.
    """
    from smartcard import scard

    command = list(apdu)
    with pcsc_context() as ctx:
        hresult, handle, protocol = scard.SCardConnect(
            ctx, reader_name, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise PcscError("SCardConnect", hresult)
        try:

            def roundtrip() -> list[int]:
                hr, response = scard.SCardTransmit(handle, protocol, command)
                if hr != scard.SCARD_S_SUCCESS:
                    raise PcscError("SCardTransmit", hr)
                return response

            response = benchmark(roundtrip)
        finally:
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["apdu_per_s"] = round(1 / stats.stats.mean)
    return bytes(response)


def test_echo_card_roundtrips(benchmark, echo_reader: str) -> None:
    assert bench_roundtrip(benchmark, echo_reader, ECHO_APDU) == b"\x90\x00"
