"""The APDU codec: ISO 7816-4 cases, short and extended, and malformed lengths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mynaemu import sw
from mynaemu.apdu import ApduError, Command, build_command, parse_command


@pytest.mark.parametrize(
    ("hexstr", "expected"),
    [
        ("00A40000", Command(0x00, 0xA4, 0, 0, b"", None, False)),
        ("00B0000000", Command(0x00, 0xB0, 0, 0, b"", 256, False)),
        ("00B0000011", Command(0x00, 0xB0, 0, 0, b"", 0x11, False)),
        ("00A4020C020018", Command(0x00, 0xA4, 2, 0x0C, b"\x00\x18", None, False)),
        ("802A008003AABBCC00", Command(0x80, 0x2A, 0, 0x80, b"\xaa\xbb\xcc", 256, False)),
        ("00B0000400061F", Command(0x00, 0xB0, 0, 4, b"", 0x061F, True)),
        ("00B08100000000", Command(0x00, 0xB0, 0x81, 0, b"", 65536, True)),
        ("80A206C1000003010203", Command(0x80, 0xA2, 6, 0xC1, b"\x01\x02\x03", None, True)),
        ("802A0080000002AABB0100", Command(0x80, 0x2A, 0, 0x80, b"\xaa\xbb", 256, True)),
        ("802A0080000002AABB0000", Command(0x80, 0x2A, 0, 0x80, b"\xaa\xbb", 65536, True)),
    ],
)
def test_cases_parse(hexstr: str, expected: Command) -> None:
    assert parse_command(bytes.fromhex(hexstr)) == expected


@pytest.mark.parametrize(
    "hexstr",
    ["", "00", "00A4", "00A402", "00A4020C0300", "00A4020C02001800AA", "00B0000000AA", "000000000001",
     "00B000000000", "00B00000000002AA", "00B0000000000000"],
)
def test_malformed_lengths_answer_6700(hexstr: str) -> None:
    with pytest.raises(ApduError) as exc:
        parse_command(bytes.fromhex(hexstr))
    assert exc.value.sw == sw.WRONG_LENGTH


@given(
    cla=st.integers(0, 255), ins=st.integers(0, 255), p1=st.integers(0, 255), p2=st.integers(0, 255),
    data=st.binary(max_size=300), le=st.one_of(st.none(), st.integers(1, 65536)),
)
def test_build_then_parse_round_trips(cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None) -> None:
    cmd = parse_command(build_command(cla, ins, p1, p2, data, le))
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le) == (cla, ins, p1, p2, data, le)
