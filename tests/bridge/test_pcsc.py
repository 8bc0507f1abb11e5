"""The bridge through the real stack: pyscard → pcscd → vpcd → VpcdLink → card."""

from __future__ import annotations

import json
import signal
import threading

import pytest

from reader_bridge.echo import ECHO_ATR, EchoCard
from reader_bridge.pcscd import find_vpcd_readers, pcscd_running, reader_name, wait_for_card
from reader_bridge.serve import serve
from reader_bridge.trace import ApduTrace

pytestmark = pytest.mark.pcsc

ATR = bytes.fromhex("3BE000FF8131FE4514")
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_EF = bytes.fromhex("00A4020C020018")
VERIFY = bytes.fromhex("002000800431323334")
CHANGE = bytes.fromhex("002401800435363738")
CHANGE_KEY = bytes.fromhex("803200800439393939")
READ = bytes.fromhex("00B0000003")


@pytest.fixture
def jpki_card(canned_card):
    """A canned card with a JPKI-like SELECT, VERIFY, CHANGE REFERENCE DATA and READ."""
    return canned_card(
        {
            SELECT_JPKI: b"\x90\x00",
            SELECT_EF: b"\x90\x00",
            VERIFY: b"\x90\x00",
            CHANGE: b"\x90\x00",
            READ: b"\x30\x82\x05\x90\x00",
        },
        selects={SELECT_JPKI: "jpki"},
    )


def test_vpcd_reader_names(pcscd):
    assert find_vpcd_readers() == ["Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert [reader_name(0), reader_name(1)] == find_vpcd_readers()


def test_wait_for_card_times_out(pcscd):
    with pytest.raises(TimeoutError, match="'Virtual PCD 00 07' did not show a card"):
        wait_for_card("Virtual PCD 00 07", present=True, timeout=0.3)  # no such reader
    with pytest.raises(TimeoutError, match="'Virtual PCD 00 00' did not show a card"):
        wait_for_card("Virtual PCD 00 00", present=True, timeout=0.3)  # empty slot
    assert wait_for_card("Virtual PCD 00 00", present=False, timeout=0.3) == b""


def test_echo_card_appears_and_answers(slots, connect):
    card = EchoCard()
    name = slots.insert(1, card)
    assert name == "Virtual PCD 00 01"
    assert wait_for_card(name, present=True, timeout=1) == ECHO_ATR
    connection = connect(name)
    assert bytes(connection.getATR()) == ECHO_ATR
    assert connection.transmit([0x00, 0xA4, 0x04, 0x00, 0x02, 0x3F, 0x00]) == ([], 0x90, 0x00)
    assert card.apdus == 1


def test_quickack_is_rearmed_before_every_receive():
    """The cure for vpcd's 48 ms stall (spec: pcsc-bridge.md): TCP_QUICKACK before each recv.

    Checked as behaviour, not time (speed is the benchmarks' business): a socket that records
    calls sees the option set before every recv, however the frames are split.
    """
    import socket as socket_module

    from reader_bridge.vpcd import _FrameReader

    quickack = getattr(socket_module, "TCP_QUICKACK", None)
    if quickack is None:
        pytest.skip("TCP_QUICKACK exists on Linux only")

    class RecordingSocket:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks, self.calls = chunks, []

        def setsockopt(self, level: int, option: int, value: int) -> None:
            self.calls.append(("setsockopt", level, option, value))

        def recv(self, n: int) -> bytes:
            self.calls.append(("recv",))
            return self.chunks.pop(0)

    sock = RecordingSocket([b"\x00", b"\x05\x00\xa4", b"\x04\x0c\x00", b"\x00\x01\x04"])
    reader = _FrameReader(sock)  # type: ignore[arg-type]
    assert reader.read_frame() == b"\x00\xa4\x04\x0c\x00"
    assert reader.read_frame() == b"\x04"
    recvs = [i for i, call in enumerate(sock.calls) if call == ("recv",)]
    assert len(recvs) == 4
    for i in recvs:
        assert sock.calls[i - 1] == ("setsockopt", socket_module.IPPROTO_TCP, quickack, 1)


def test_canned_answers_exact_bytes(slots, connect, jpki_card):
    connection = connect(slots.insert(0, jpki_card))
    assert connection.transmit(list(SELECT_JPKI)) == ([], 0x90, 0x00)
    assert connection.transmit(list(READ)) == ([0x30, 0x82, 0x05], 0x90, 0x00)
    assert connection.transmit(list(bytes.fromhex("00CA5F5100"))) == ([], 0x6D, 0x00)
    assert jpki_card.apdus == [SELECT_JPKI, READ, bytes.fromhex("00CA5F5100")]


def test_extended_length_through_pcscd(slots, connect, canned_card):
    update = bytes.fromhex("00D60000000400") + bytes(range(256)) * 4
    read = bytes.fromhex("00B00000000800")
    card = canned_card({update: b"\x90\x00", read: bytes([0x5A]) * 0x800 + b"\x90\x00"})
    connection = connect(slots.insert(0, card))
    assert connection.transmit(list(update)) == ([], 0x90, 0x00)
    assert connection.transmit(list(read)) == ([0x5A] * 0x800, 0x90, 0x00)
    assert card.apdus == [update, read]


def test_reconnect_with_and_without_reset(slots, connect, jpki_card):
    from smartcard.scard import SCARD_LEAVE_CARD, SCARD_RESET_CARD

    card = jpki_card
    connection = connect(slots.insert(0, card))
    assert card.calls["power_on"] == 1 and card.calls["reset"] == 0
    connection.transmit(list(SELECT_JPKI))
    assert card.current_ap == "jpki"
    connection.reconnect(disposition=SCARD_LEAVE_CARD)
    assert card.calls["reset"] == 0
    assert card.current_ap == "jpki"
    connection.reconnect(disposition=SCARD_RESET_CARD)
    assert card.calls["reset"] == 1
    assert card.current_ap is None
    assert connection.transmit(list(READ)) == ([0x30, 0x82, 0x05], 0x90, 0x00)


def test_insert_and_remove_seen_by_pcsc(slots):
    name = reader_name(1, find_vpcd_readers())
    card = EchoCard()
    slots.insert(1, card)
    assert wait_for_card(name, present=True, timeout=1) == ECHO_ATR
    slots.readers.remove(1)
    assert wait_for_card(name, present=False, timeout=5) == b""
    slots.readers.insert(1, card)
    assert wait_for_card(name, present=True, timeout=5) == ECHO_ATR


def test_card_raising_answers_6f00_and_link_lives(slots, connect, canned_card):
    boom = bytes.fromhex("00EE000000")
    card = canned_card({READ: b"\x42\x90\x00"}, raise_on={boom})
    connection = connect(slots.insert(0, card))
    assert connection.transmit(list(boom)) == ([], 0x6F, 0x00)
    assert connection.transmit(list(READ)) == ([0x42], 0x90, 0x00)
    assert slots.readers[0].connections == 1


def test_link_uses_loopback(slots):
    slots.insert(0, EchoCard())
    link = slots.readers[0]
    assert link.peer == ("127.0.0.1", 35963)


def test_pcscd_killed_and_restarted(pcscd, slots, connect, jpki_card):
    if not pcscd.owned:
        pytest.skip("pcscd was started outside this test session; the test kills only its own pcscd")
    card = jpki_card
    name = slots.insert(0, card)
    first = connect(name)
    assert first.transmit(list(SELECT_JPKI)) == ([], 0x90, 0x00)
    first.release()  # its context would not survive the restart
    pcscd.kill()
    pcscd.start()
    assert wait_for_card(name, present=True, timeout=10) == ATR
    assert connect(name).transmit(list(READ)) == ([0x30, 0x82, 0x05], 0x90, 0x00)
    assert slots.readers[0].connections == 2
    assert card.apdus == [SELECT_JPKI, READ]  # same card object, state kept


def test_trace_masks_secrets(make_slots, connect, jpki_card, tmp_path):
    path = tmp_path / "trace.jsonl"
    with ApduTrace(path) as trace:
        traced = make_slots(trace=trace)
        connection = connect(traced.insert(0, jpki_card))
        for apdu in (SELECT_JPKI, SELECT_EF, VERIFY, CHANGE, CHANGE_KEY):
            connection.transmit(list(apdu))
        traced.remove(0)
    text = path.read_text()
    for secret in ("31323334", "35363738", "39393939"):
        assert secret not in text
    exchanges = [json.loads(line) for line in text.splitlines() if '"cmd"' in line]
    assert [(r["cmd"], r["rsp"], r["sw"], r["ap"], r["slot"]) for r in exchanges] == [
        ("00A4040C0AD392F000260100000001", "9000", "9000", "jpki", 0),
        ("00A4020C020018", "9000", "9000", "jpki", 0),
        ("0020008004********", "9000", "9000", "jpki", 0),
        ("0024018004********", "9000", "9000", "jpki", 0),
        ("8032008004********", "6D00", "6D00", "jpki", 0),
    ]
    assert all(isinstance(r["us"], int) and r["us"] >= 0 for r in exchanges)
    events = [json.loads(line)["event"] for line in text.splitlines() if '"event"' in line]
    assert events[0] == "connect" and "power_on" in events and events[-1] == "disconnect"


def test_serve_in_a_thread(pcscd, connect, canned_card, tmp_path):
    card = canned_card({READ: b"\x01\x02\x03\x90\x00"})
    echo = EchoCard()
    ready = threading.Event()
    names: list[str] = []
    stop = threading.Event()

    def on_ready(readers: list[str]) -> None:
        names.extend(readers)
        ready.set()

    thread = threading.Thread(
        target=serve,
        args=({0: card, 1: echo},),
        kwargs={"on_ready": on_ready, "stop_event": stop, "trace_path": tmp_path / "t.jsonl"},
    )
    thread.start()
    try:
        assert ready.wait(15)
        assert names == ["Virtual PCD 00 00", "Virtual PCD 00 01"]
        assert connect(names[0]).transmit(list(READ)) == ([1, 2, 3], 0x90, 0x00)
        assert connect(names[1]).transmit(list(READ)) == ([], 0x90, 0x00)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert pcscd_running()  # serve left the session's pcscd alone
    for name in names:
        assert wait_for_card(name, present=False, timeout=5) == b""
    assert '"cmd":"00B0000003","rsp":"0102039000"' in (tmp_path / "t.jsonl").read_text()


def test_serve_rejects_a_slot_without_reader(pcscd, canned_card):
    with pytest.raises(ValueError, match=r"Virtual PCD 4-5 00 01 .*mynaemu readers setup"):
        serve({5: canned_card()}, stop_event=threading.Event())


def test_serve_stops_on_sigterm(pcscd, canned_card):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    card = canned_card()
    before = signal.getsignal(signal.SIGTERM)
    seen: list[list[str]] = []

    def on_ready(readers: list[str]) -> None:
        seen.append(readers)
        signal.raise_signal(signal.SIGTERM)

    serve({1: card}, on_ready=on_ready)
    assert seen == [["Virtual PCD 00 01"]]
    assert signal.getsignal(signal.SIGTERM) is before
    assert wait_for_card("Virtual PCD 00 01", present=False, timeout=5) == b""
    assert pcscd_running()
