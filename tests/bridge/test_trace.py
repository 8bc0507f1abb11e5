"""APDU trace: masking of secrets and the JSON-lines format."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reader_bridge.trace import ApduTrace, is_secret_command, mask_apdu
from reader_bridge.vpcd import VpcdLink


@pytest.mark.parametrize(
    ("apdu", "expected"),
    [
        ("002000800431323334", "0020008004********"),  # VERIFY, short
        ("0C2000800431323334", "0C20008004********"),  # VERIFY, SM class
        ("00200080000004313233340000", "00200080000004********0000"),  # VERIFY, extended, with Le
        ("0020008000", "0020008000"),  # empty VERIFY (retry query): nothing to hide
        ("00200080", "00200080"),
        ("002401800435363738", "0024018004********"),  # CHANGE REFERENCE DATA
        ("803200800435363738", "8032008004********"),  # JICSAP CHANGE KEY
        ("002C0001083132333435363738", "002C000108****************"),  # RESET RETRY COUNTER
        ("0020008004313233", "0020008004******"),  # Lc longer than the data: mask the tail
        ("00200080023132333400", "0020008002**********"),  # trailing junk: mask the tail
        ("003200800435363738", "0032008004********"),  # CHANGE KEY sent with CLA 00: masked too
        ("002100800431323334", "0021008004********"),  # odd-INS VERIFY
        ("FF2000800431323334", "FF20008004********"),  # any class, even an invalid one
        ("002000800031", "0020008000**"),  # P3 00 and a stray byte: not a length, masked
        ("00200080003132", "0020008000****"),  # would be an extended Le, but VERIFY has none
        ("0020008000000431", "00200080000004**"),  # extended Lc 4, one byte: the tail
        ("00A4040C03112233", "00A4040C03112233"),  # SELECT: untouched
        ("00B0000000", "00B0000000"),
    ],
)
def test_mask_apdu(apdu, expected):
    assert mask_apdu(bytes.fromhex(apdu)) == expected


@given(
    cla=st.sampled_from([0x00, 0x0C, 0x80, 0x84]),
    ins=st.sampled_from([0x20, 0x24, 0x2C]),
    data=st.binary(min_size=1, max_size=300),
    le=st.booleans(),
)
def test_secret_data_never_shows(cla, ins, data, le):
    if len(data) <= 255:
        head, trailer = bytes([cla, ins, 0, 0x80, len(data)]), b"\x00"
    else:
        head, trailer = bytes([cla, ins, 0, 0x80, 0]) + len(data).to_bytes(2, "big"), b"\x00\x00"
    trailer = trailer if le else b""
    apdu = head + data + trailer
    assert is_secret_command(apdu)
    assert mask_apdu(apdu) == head.hex().upper() + "**" * len(data) + trailer.hex().upper()


def test_trace_lines_from_a_link(fake_vpcd, canned_card):
    select = bytes.fromhex("00A4040C0AD392F000260100000001")
    verify = bytes.fromhex("002000800431323334")
    card = canned_card({select: b"\x90\x00", verify: b"\x63\xc2"}, selects={select: "jpki"})
    out = io.StringIO()
    trace = ApduTrace(out)
    link = VpcdLink(card, slot=1, port=fake_vpcd.port, trace=trace).start()
    try:
        fake_vpcd.accept()
        fake_vpcd.send(b"\x01")
        assert fake_vpcd.exchange(select) == b"\x90\x00"
        assert fake_vpcd.exchange(verify) == b"\x63\xc2"
    finally:
        link.close()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    for rec in records:
        assert rec.pop("ts").endswith("+00:00")
    exchanges = [r for r in records if "cmd" in r]
    for rec in exchanges:
        assert isinstance(rec.pop("us"), int)
    assert exchanges == [
        {"slot": 1, "ap": "jpki", "cmd": "00A4040C0AD392F000260100000001", "rsp": "9000", "sw": "9000"},
        {"slot": 1, "ap": "jpki", "cmd": "0020008004********", "rsp": "63C2", "sw": "63C2"},
    ]
    assert [r["event"] for r in records if "event" in r] == ["connect", "power_on", "disconnect"]
    assert "31323334" not in out.getvalue()


def test_trace_file_appends_json_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    with ApduTrace(path) as trace:
        trace.exchange(0, bytes.fromhex("0024018004") + b"9876", b"\x90\x00", 12_345, None)
    with ApduTrace(path) as trace:
        trace.event(0, "reset")
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["cmd"], first["sw"], first["us"], first["ap"]) == ("0024018004********", "9000", 12, None)
    assert second["event"] == "reset"


def test_a_failing_trace_never_breaks_the_link(fake_vpcd, canned_card):
    read = bytes.fromhex("00B0000001")

    class DiskFull(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    trace = ApduTrace(DiskFull())
    link = VpcdLink(canned_card({read: b"\x90\x00"}), port=fake_vpcd.port, trace=trace).start()
    try:
        fake_vpcd.accept()
        assert fake_vpcd.exchange(read) == b"\x90\x00"
        assert fake_vpcd.exchange(read) == b"\x90\x00"
        assert link.connections == 1
    finally:
        link.close()
