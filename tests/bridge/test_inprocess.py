"""InProcessConnection: pyscard-style code against a card object, no pcscd."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reader_bridge.inprocess import (
    SCARD_LEAVE_CARD,
    SCARD_RESET_CARD,
    SCARD_UNPOWER_CARD,
    CardConnectionException,
    InProcessConnection,
    InProcessReader,
)

SELECT_MF = bytes.fromhex("00A4000C023F00")
READ = bytes.fromhex("00B0000003")
ATR = [0x3B, 0xE0, 0x00, 0xFF, 0x81, 0x31, 0xFE, 0x45, 0x14]


def read_card(connection) -> tuple[str, str]:
    """What a user's pyscard script does with ``reader.createConnection()``."""
    from smartcard.util import toHexString

    connection.connect()
    atr = toHexString(connection.getATR())
    data, sw1, sw2 = connection.transmit(list(SELECT_MF))
    assert (data, sw1, sw2) == ([], 0x90, 0x00)
    data, sw1, sw2 = connection.transmit(list(READ))
    return atr, f"{toHexString(data)} {sw1:02X}{sw2:02X}"


def test_pyscard_style_script(canned_card):
    pytest.importorskip("smartcard", reason="pyscard not installed", exc_type=ImportError)
    from smartcard.CardConnection import CardConnection

    card = canned_card({SELECT_MF: b"\x90\x00", READ: b"\x0a\x0b\x0c\x90\x00"})
    connection = InProcessReader(card, "Test Reader 0").createConnection()
    assert isinstance(connection, CardConnection)
    assert read_card(connection) == ("3B E0 00 FF 81 31 FE 45 14", "0A 0B 0C 9000")
    assert connection.getReader() == "Test Reader 0"
    connection.disconnect()
    assert card.calls == Counter(power_on=1, transmit=2, power_off=1)


def test_power_follows_dispositions(canned_card):
    card = canned_card({READ: b"\x90\x00"})
    reader = InProcessReader(card)
    first = InProcessConnection(reader)
    first.connect(disposition=SCARD_LEAVE_CARD)
    assert first.getATR() == ATR
    first.reconnect(disposition=SCARD_LEAVE_CARD)
    assert card.calls == Counter(power_on=1)
    first.reconnect()  # default: warm reset
    assert card.calls == Counter(power_on=1, reset=1)
    first.reconnect(disposition=SCARD_UNPOWER_CARD)  # cold reset
    assert card.calls == Counter(power_on=2, reset=1, power_off=1)
    first.disconnect()  # UNPOWER from the last reconnect
    assert card.calls["power_off"] == 2

    second = InProcessConnection(reader)
    second.connect(disposition=SCARD_RESET_CARD)
    third = InProcessConnection(reader)
    third.connect(disposition=SCARD_LEAVE_CARD)  # already powered: no second power on
    assert card.calls["power_on"] == 3
    second.disconnect()
    assert card.calls["reset"] == 2
    assert third.transmit(list(READ)) == ([], 0x90, 0x00)


def test_not_connected_and_short_answers_raise(canned_card):
    connection = InProcessConnection(canned_card({READ: b"\x90"}))
    with pytest.raises(CardConnectionException):
        connection.transmit(list(READ))
    connection.connect()
    with pytest.raises(CardConnectionException):
        connection.transmit(list(READ))
    connection.disconnect()
    with pytest.raises(CardConnectionException):
        connection.getATR()


def test_observers_and_error_checking(canned_card):
    pytest.importorskip("smartcard", reason="pyscard not installed", exc_type=ImportError)
    from smartcard.CardConnectionObserver import CardConnectionObserver
    from smartcard.sw.ErrorCheckingChain import ErrorCheckingChain
    from smartcard.sw.ISO7816_4ErrorChecker import ISO7816_4ErrorChecker
    from smartcard.sw.SWExceptions import CheckingErrorException

    events: list[tuple[str, object]] = []

    class Recorder(CardConnectionObserver):
        def update(self, observable, event):
            events.append((event.type, event.args))

    card = canned_card({READ: b"\x01\x90\x00"})
    with InProcessConnection(card) as connection:
        connection.addObserver(Recorder())
        connection.setErrorCheckingChain([ErrorCheckingChain([], ISO7816_4ErrorChecker())])
        connection.connect()
        assert connection.transmit(list(READ)) == ([1], 0x90, 0x00)
        with pytest.raises(CheckingErrorException):
            connection.transmit(list(bytes.fromhex("00A4000C020001")))  # 6D00 → checking error
    assert events[:3] == [("connect", None), ("command", [list(READ), None]), ("response", [[1], 0x90, 0x00])]
    assert events[-1] == ("disconnect", None)
    assert card.calls["power_off"] == 1


def test_works_without_pyscard():
    root = Path(__file__).resolve().parents[2]
    script = """
import sys
sys.modules["smartcard"] = None  # pyscard "missing"
from reader_bridge.echo import EchoCard
from reader_bridge.inprocess import InProcessConnection, CardConnectionException
card = EchoCard()
conn = InProcessConnection(card, "r")
try:
    conn.transmit([0, 0xB0, 0, 0, 1])
except CardConnectionException:
    pass
else:
    raise SystemExit("expected CardConnectionException")
conn.connect()
print(conn.getATR(), conn.transmit(b"\\x00\\xb0\\x00\\x00\\x01"), conn.getReader(), card.apdus)
conn.disconnect()
print(card.powered)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[59, 128, 128, 1, 1] ([], 144, 0) r 1", "False"]
