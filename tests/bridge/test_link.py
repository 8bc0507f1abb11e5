"""VpcdLink against a hand-driven fake vpcd on loopback (no pcscd needed)."""

from __future__ import annotations

import socket
from collections import Counter

import pytest

from reader_bridge.echo import ECHO_ATR, EchoCard
from reader_bridge.vpcd import VirtualReaderSet, VpcdLink

ATR = bytes.fromhex("3BE000FF8131FE4514")
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
READ = bytes.fromhex("00B0000002")


@pytest.fixture
def link_to(fake_vpcd):
    """Start a link to the fake vpcd; closed at teardown."""
    links: list[VpcdLink] = []

    def _start(card, **options) -> VpcdLink:
        link = VpcdLink(card, host="127.0.0.1", port=fake_vpcd.port, **options).start()
        links.append(link)
        return link

    yield _start
    for link in links:
        link.close()


def test_control_codes_and_apdus(fake_vpcd, link_to, canned_card):
    card = canned_card({READ: bytes.fromhex("01029000")})
    link_to(card)
    fake_vpcd.accept()
    assert fake_vpcd.exchange(b"\x04") == ATR
    fake_vpcd.send(b"\x01")  # power on: no answer
    assert fake_vpcd.exchange(READ) == bytes.fromhex("01029000")
    fake_vpcd.send(b"\x02")  # reset
    fake_vpcd.send(b"\x00")  # power off
    assert fake_vpcd.exchange(b"\x04") == ATR
    assert card.calls == Counter(power_on=1, transmit=1, reset=1, power_off=1)
    assert card.apdus == [READ]


def test_frames_split_or_coalesced(fake_vpcd, link_to, canned_card):
    card = canned_card({READ: bytes.fromhex("A1B29000")})
    link_to(card)
    conn = fake_vpcd.accept()
    frame = len(READ).to_bytes(2, "big") + READ
    for i in range(len(frame)):  # one byte per segment
        conn.sendall(frame[i : i + 1])
    assert fake_vpcd.recv() == bytes.fromhex("A1B29000")
    conn.sendall(b"\x00\x01\x04" + frame + b"\x00\x01\x04")  # three frames in one segment
    assert [fake_vpcd.recv() for _ in range(3)] == [ATR, bytes.fromhex("A1B29000"), ATR]


def test_zero_length_frame_drops_link_and_powers_the_card_off(fake_vpcd, link_to, canned_card):
    """The link ends, so the card leaves the reader (power off); the same card comes back."""
    card = canned_card({SELECT_JPKI: b"\x90\x00", READ: b"\x12\x34\x90\x00"}, selects={SELECT_JPKI: "jpki"})
    link = link_to(card)
    first = fake_vpcd.accept()
    assert fake_vpcd.exchange(SELECT_JPKI) == b"\x90\x00"
    fake_vpcd.send(b"")  # malformed: zero length
    assert first.recv(1) == b""  # the link hung up
    fake_vpcd.accept()  # ...and came back
    assert fake_vpcd.exchange(READ) == b"\x12\x34\x90\x00"
    assert link.connections == 2
    assert card.apdus == [SELECT_JPKI, READ]
    assert card.calls["power_off"] == 1
    assert card.calls["reset"] == 0


def test_unknown_control_code_is_ignored(fake_vpcd, link_to, canned_card):
    card = canned_card()
    link = link_to(card)
    fake_vpcd.accept()
    fake_vpcd.send(b"\x03")
    fake_vpcd.send(b"\x7f")
    assert fake_vpcd.exchange(b"\x04") == ATR
    assert link.connections == 1
    assert sum(card.calls.values()) == 0


def test_card_raising_answers_6f00_and_link_lives(fake_vpcd, link_to, canned_card):
    boom = bytes.fromhex("00EE000000")
    card = canned_card({READ: b"\x90\x00"}, raise_on={boom})
    link = link_to(card)
    fake_vpcd.accept()
    assert fake_vpcd.exchange(boom) == b"\x6f\x00"
    assert fake_vpcd.exchange(READ) == b"\x90\x00"
    assert link.connections == 1


def test_failing_power_and_atr_keep_the_link(fake_vpcd, link_to, canned_card):
    class Broken(canned_card):
        fail_atr = True

        @property
        def atr(self) -> bytes:
            if self.fail_atr:
                raise RuntimeError("no ATR")
            return ATR

        def power_on(self) -> bytes:
            raise RuntimeError("no power")

    card = Broken({READ: b"\x90\x00"})
    link = link_to(card)
    fake_vpcd.accept()
    assert fake_vpcd.exchange(b"\x04") == b""  # no ATR yet: vpcd reads "no card"
    card.fail_atr = False
    assert fake_vpcd.exchange(b"\x04") == ATR
    card.fail_atr = True
    assert fake_vpcd.exchange(b"\x04") == ATR  # last ATR seen
    fake_vpcd.send(b"\x01")
    assert fake_vpcd.exchange(READ) == b"\x90\x00"
    assert link.connections == 1


def test_extended_frames_both_ways(fake_vpcd, link_to, canned_card):
    big_cmd = bytes.fromhex("00D6000000FFF8") + bytes(range(256)) * 255 + bytes(range(248))
    assert len(big_cmd) == 0xFFFF
    big_rsp = bytes([0xAB]) * 0xFFFD + b"\x90\x00"
    card = canned_card({big_cmd: big_rsp, READ: bytes(0x10000) + b"\x90\x00"})
    link_to(card)
    fake_vpcd.accept()
    assert fake_vpcd.exchange(big_cmd) == big_rsp
    assert fake_vpcd.exchange(READ) == b"\x6f\x00"  # 65,538 bytes do not fit a frame


def test_reconnects_with_backoff_when_vpcd_appears_later(canned_card):
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on `port` now
    link = VpcdLink(canned_card(), port=port, backoff_initial=0.01, backoff_max=0.1).start()
    try:
        assert link.connections == 0
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(10)
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"\x00\x01\x04")
                assert conn.recv(64) == b"\x00\x09" + ATR
        assert link.connections == 1
    finally:
        link.close()


def test_close_wakes_a_blocked_link(fake_vpcd, canned_card):
    link = VpcdLink(canned_card(), port=fake_vpcd.port).start()
    conn = fake_vpcd.accept()
    assert fake_vpcd.exchange(b"\x04") == ATR  # now blocked in recv
    link.close(timeout=5)  # returns once the thread ended, or after 5 s
    assert not link.running  # close woke the recv: the thread is gone
    assert conn.recv(1) == b""


def test_loopback_only_by_default(fake_vpcd, link_to, canned_card):
    assert VpcdLink(canned_card()).host == "127.0.0.1"
    assert VirtualReaderSet().host == "127.0.0.1"
    link = link_to(canned_card())
    conn = fake_vpcd.accept()
    assert fake_vpcd.exchange(b"\x04") == ATR
    assert link.peer == ("127.0.0.1", fake_vpcd.port)
    assert conn.getpeername()[0] == "127.0.0.1"
    assert link.trace is None  # tracing is opt-in


def test_reader_set_insert_and_remove(fake_vpcd):
    card = EchoCard()
    with VirtualReaderSet(base_port=fake_vpcd.port - 1) as readers:
        link = readers.insert(1, card)
        assert link.port == fake_vpcd.port
        conn = fake_vpcd.accept()
        assert fake_vpcd.exchange(b"\x04") == ECHO_ATR
        assert fake_vpcd.exchange(READ) == b"\x90\x00"
        with pytest.raises(ValueError):
            readers.insert(1, EchoCard())
        assert readers.remove(1) is card
        assert conn.recv(1) == b""
        assert 1 not in readers
        assert not link.running
    assert card.apdus == 1
