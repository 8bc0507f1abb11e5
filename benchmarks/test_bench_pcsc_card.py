"""Our card through pyscard → pcscd → vpcd → VpcdLink → ``mynaemu.Card``, beside the echo card.

    python -m pytest benchmarks/test_bench_pcsc_card.py --benchmark-enable -s   # numbers + ratios
    benchmarks/report                                                         # the table with targets

Our card (a fresh copy of the session's ``bench_issued`` card) sits in slot 0 and the echo card
(the transport floor) in slot 1, both inserted by this module, so both are measured in the same
run through the same pcscd. Our card has the JPKI AP and EF 000A selected, by a PC/SC handle kept
open beside the benchmark's own (pcscd never powers the card down in between):

* ``test_echo_card_roundtrips``: the echo card, ``ECHO_APDU`` → ``9000`` (as in test_bench_pcsc.py)
* ``test_our_card_roundtrips``: SELECT EF ``00A4020C02000A`` → ``9000``
* ``test_our_card_read_binary_256_roundtrips``: READ BINARY ``00B0000000`` → the first 256 bytes
  of the auth certificate + ``9000``

Target: our card at least 0.9x the echo card's round trips per second. The echo card answers
``9000`` only, so READ BINARY 256 also pays for moving 256 more bytes through vpcd, pcscd and
pyscard (about 4-5 us of a ~55 us round trip on a 2-core machine, i.e. ~0.9x by itself; the card
spends < 1 us). The echo card here therefore answers READ BINARY with as many zero bytes as
asked (everything else ``9000``, exactly like :class:`EchoCard`), and
``test_our_card_against_echo`` (timing on only) compares like with like: SELECT EF with SELECT
EF, READ 256 with READ 256, interleaved on the two readers, and prints every ratio.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_bench_pcsc as echo_bench

from reader_bridge.echo import EchoCard
from reader_bridge.pcscd import PcscError, pcsc_context
from reader_bridge.vpcd import VirtualReaderSet

pytestmark = pytest.mark.pcsc

# test_bench_pcsc.py's module-scoped fixtures, bound here: this module gets its own pcscd harness
# and reader set (every card is removed, and seen EMPTY, when the module ends).
pcscd_harness = echo_bench.pcscd_harness
reader_set = echo_bench.reader_set
bench_roundtrip = echo_bench.bench_roundtrip
insert_card = echo_bench.insert_card

CARD_SLOT = 0
ECHO_SLOT = echo_bench.ECHO_SLOT
ECHO_APDU = echo_bench.ECHO_APDU
OK = b"\x90\x00"
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_000A = bytes.fromhex("00A4020C02000A")
READ_256 = bytes.fromhex("00B0000000")
TARGET_RATIO = 0.9

# benchmark name → its benchmark fixture (stats filled in when timing is on)
RESULTS: dict[str, Any] = {}


class PayloadEchoCard(EchoCard):
    """The echo card, except that READ BINARY (short Le) answers Le zero bytes + ``9000``."""

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus += 1
        if len(apdu) == 5 and apdu[1] == 0xB0:
            return bytes(apdu[4] or 256) + OK
        return OK


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

    def close(self) -> None:
        self.sc.SCardDisconnect(self.handle, self.sc.SCARD_LEAVE_CARD)


@pytest.fixture(scope="module")
def echo_reader(reader_set: VirtualReaderSet) -> str:
    """Reader name of the echo card on slot 1."""
    return insert_card(reader_set, ECHO_SLOT, PayloadEchoCard())


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
            assert our_card.current_ap == "jpki"
            yield name  # the handle stays open: the card stays powered and keeps its selection
        finally:
            holder.close()


def test_echo_card_roundtrips(benchmark, echo_reader: str, our_reader: str) -> None:
    """The floor, measured in this module with our card inserted beside it."""
    assert bench_roundtrip(benchmark, echo_reader, ECHO_APDU) == OK
    RESULTS["echo"] = benchmark


def test_our_card_roundtrips(benchmark, our_reader: str, our_card) -> None:
    """SELECT EF 000A in the JPKI AP."""
    assert bench_roundtrip(benchmark, our_reader, SELECT_000A) == OK
    assert our_card.current_ap == "jpki"
    RESULTS["select_ef"] = benchmark


def test_our_card_read_binary_256_roundtrips(benchmark, our_reader: str, our_card) -> None:
    """READ BINARY 256 bytes of EF 000A (after SELECT JPKI, SELECT 000A)."""
    expected = our_card.dir.content["jpki.auth_cert"][:256] + OK
    assert bench_roundtrip(benchmark, our_reader, READ_256) == expected
    RESULTS["read_256"] = benchmark


def _interleaved_medians(handles: dict[str, tuple[Handle, bytes]], rounds: int = 1500) -> dict[str, float]:
    """Median seconds per round trip of each (handle, APDU), one round trip of each in turn.

    Alternating single round trips lets a burst of load on the machine hit every handle alike.
    """
    times: dict[str, list[float]] = {name: [] for name in handles}
    plan = [
        (times[name], handle.sc.SCardTransmit, handle.handle, handle.protocol, list(apdu))
        for name, (handle, apdu) in handles.items()
    ]
    clock = time.perf_counter
    for _ in range(rounds):
        for out, transmit, h, protocol, command in plan:
            start = clock()
            transmit(h, protocol, command)
            out.append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def test_our_card_against_echo(our_reader: str, echo_reader: str, our_card) -> None:
    """Our card >= 0.9x the echo card, like for like; prints the benchmark medians' ratios too."""
    stats = {name: getattr(bench, "stats", None) for name, bench in RESULTS.items()}
    if set(stats) != {"echo", "select_ef", "read_256"} or None in stats.values():
        pytest.skip("needs this module's three benchmarks with timing on (--benchmark-enable)")
    ops = {name: 1 / s.stats.median for name, s in stats.items()}  # type: ignore[union-attr]
    lines = [
        "PC/SC round trips/s (benchmark medians):",
        f"  echo card (slot 1), {ECHO_APDU.hex().upper()}: {ops['echo']:,.0f}/s",
        f"  our card (slot 0), SELECT EF 000A: {ops['select_ef']:,.0f}/s, ratio {ops['select_ef'] / ops['echo']:.2f}",
        f"  our card (slot 0), READ BINARY 256: {ops['read_256']:,.0f}/s, ratio {ops['read_256'] / ops['echo']:.2f}"
        " (the echo answers 2 bytes, this 258)",
    ]

    expected = our_card.dir.content["jpki.auth_cert"][:256] + OK
    with pcsc_context() as ctx:
        ours, echo = Handle(ctx, our_reader), Handle(ctx, echo_reader)
        try:
            assert ours.transmit(READ_256) == expected and echo.transmit(READ_256) == bytes(256) + OK
            medians = _interleaved_medians(
                {
                    "echo_select": (echo, SELECT_000A),
                    "our_select": (ours, SELECT_000A),
                    "echo_read": (echo, READ_256),
                    "our_read": (ours, READ_256),
                }
            )
        finally:
            ours.close()
            echo.close()
    ratios = {
        "SELECT EF 000A": medians["echo_select"] / medians["our_select"],
        "READ BINARY 256": medians["echo_read"] / medians["our_read"],
    }
    lines.append("Like for like, interleaved (medians; the echo card answers READ BINARY with 256 zero bytes):")
    for label, (echo_key, our_key) in {
        "SELECT EF 000A": ("echo_select", "our_select"),
        "READ BINARY 256": ("echo_read", "our_read"),
    }.items():
        lines.append(
            f"  {label}: echo {1 / medians[echo_key]:,.0f}/s, ours {1 / medians[our_key]:,.0f}/s, "
            f"ratio {ratios[label]:.2f} (target >= {TARGET_RATIO})"
        )
    report = "\n".join(lines)
    print("\n" + report)
    RESULTS["select_ef"].extra_info["ratio_to_echo"] = round(ratios["SELECT EF 000A"], 3)
    RESULTS["read_256"].extra_info["ratio_to_echo_same_payload"] = round(ratios["READ BINARY 256"], 3)
    assert all(r >= TARGET_RATIO for r in ratios.values()), report
