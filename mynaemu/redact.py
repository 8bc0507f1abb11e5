"""Masking of secrets in anything shown to people: traces, logs, CLI output.

The command data of VERIFY (INS 20), CHANGE REFERENCE DATA (INS 24) and RESET RETRY COUNTER
(INS 2C) in any class, and of JICSAP CHANGE KEY (INS 32 in a proprietary class, e.g. CLA 80), is
replaced by ``**`` per byte; the header, Lc and Le stay. A body whose lengths do not parse is
masked whole from the first data byte on, so a malformed command never shows a secret either.
"""

from __future__ import annotations

MASK = "**"
_SECRET_INS_ANY_CLASS = frozenset({0x20, 0x24, 0x2C})
_SECRET_INS_PROPRIETARY = frozenset({0x32})


def carries_secret(apdu: bytes) -> bool:
    """True when the command data may carry a PIN, password or check number."""
    if len(apdu) < 4:
        return False
    cla, ins = apdu[0], apdu[1]
    if ins in _SECRET_INS_ANY_CLASS:
        return True
    return ins in _SECRET_INS_PROPRIETARY and bool(cla & 0x80) and cla != 0xFF


def _data_span(apdu: bytes) -> tuple[int, int]:
    """(start, end) of the command data; the whole tail when the lengths do not parse."""
    n = len(apdu)
    if n <= 5:
        return n, n  # case 1 or case 2 short: no data
    if apdu[4] != 0:
        start, lc, trailers = 5, apdu[4], (0, 1)
    elif n == 7:
        return n, n  # case 2 extended: no data
    else:
        start, lc, trailers = 7, int.from_bytes(apdu[5:7], "big"), (0, 2)
    if n - start - lc in trailers:
        return start, start + lc
    return start, n


def mask_command(apdu: bytes) -> str:
    """The command as upper-case hex, any secret data bytes shown as ``**``."""
    if not carries_secret(apdu):
        return apdu.hex().upper()
    start, end = _data_span(apdu)
    return apdu[:start].hex().upper() + MASK * (end - start) + apdu[end:].hex().upper()
