"""Masking of secrets in anything shown to people: traces, logs, CLI output, error messages.

One rule for the whole project: a command whose INS is VERIFY (20, odd form 21), CHANGE
REFERENCE DATA (24, 25), RESET RETRY COUNTER (2C, 2D) or CHANGE KEY (32, 33) carries a secret,
in any class byte (00, 80, 0C, 84, FF, ...), since a client may send JICSAP's CHANGE KEY with CLA
00 or a VERIFY in a class the card refuses. Its command data is replaced by ``**`` per byte; the
header, Lc and Le stay. A body whose lengths do not parse (odd, short or long Lc) is masked whole
from the first byte after P3 on, so a malformed command never shows a secret either. Text that is
not even whole hex bytes is masked by ``mask_hex_text`` after its header, or wholesale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "**"
SECRET_INS = frozenset({0x20, 0x21, 0x24, 0x25, 0x2C, 0x2D, 0x32, 0x33})
_HEX_DIGITS = re.compile(r"[0-9A-Fa-f]*")


def carries_secret(apdu: bytes) -> bool:
    """True when the command data may carry a PIN, password or check number."""
    return len(apdu) >= 2 and apdu[1] in SECRET_INS


def _data_span(apdu: bytes) -> tuple[int, int]:
    """(start, end) of the command data; the whole tail after P3 when the lengths do not parse."""
    n = len(apdu)
    if n <= 5:
        return n, n  # case 1 or case 2 short: no data
    if apdu[4] != 0:
        start, lc, trailers = 5, apdu[4], (0, 1)
    elif n <= 7:
        return 5, n  # P3 = 00 and up to two bytes: no secret command has Le, so they may be data
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


def mask_hex_text(text: str) -> str:
    """What a user typed as an APDU, fit to show in a message about it.

    Whole hex bytes go through ``mask_command``. Anything else (odd length, a non-hex digit) keeps
    CLA INS P1 P2 when they are hex and INS is not a secret-carrying one, and is otherwise shown
    only as ``*`` per character after what can be shown, so a typo never echoes a PIN.
    """
    cleaned = "".join(text.split())
    if len(cleaned) % 2 == 0 and _HEX_DIGITS.fullmatch(cleaned):
        return mask_command(bytes.fromhex(cleaned))
    head = cleaned[:8]
    if len(head) == 8 and _HEX_DIGITS.fullmatch(head):
        if bytes.fromhex(head)[1] not in SECRET_INS:
            return cleaned  # no secret-carrying command: the typo itself helps
        return head.upper() + "*" * (len(cleaned) - 8)
    return "*" * len(cleaned)


def secret_forms(values: Iterable[str]) -> set[str]:
    """Every form a secret value may take in text: as typed, and its hex in upper and lower case."""
    out: set[str] = set()
    for value in values:
        if not value:
            continue
        raw = value.encode("utf-8", "replace")
        out |= {value, raw.hex(), raw.hex().upper()}
    return out


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every form of every secret replaced by ``***`` (for error messages)."""
    for form in sorted(secret_forms(secrets), key=len, reverse=True):
        text = text.replace(form, "***")
    return text
