"""Masking of secrets in anything shown to people: traces, logs, CLI output.

VERIFY (00 20), CHANGE REFERENCE DATA (00 24) and CHANGE KEY (80 32) carry PINs, passwords and
check numbers in their data field; those bytes are replaced by ``**`` each.
"""

from __future__ import annotations

SECRET_COMMANDS = frozenset({(0x00, 0x20), (0x00, 0x24), (0x80, 0x32)})


def carries_secret(apdu: bytes) -> bool:
    """Whether the command's data field holds a secret."""
    return len(apdu) > 5 and (apdu[0] & 0xF0, apdu[1]) in SECRET_COMMANDS


def mask_command(apdu: bytes) -> str:
    """The command as hex with any secret data bytes shown as ``**``."""
    if not carries_secret(apdu):
        return apdu.hex().upper()
    if apdu[4] == 0 and len(apdu) >= 7:  # extended Lc
        head, n = 7, (apdu[5] << 8) | apdu[6]
    else:
        head, n = 5, apdu[4]
    n = min(n, len(apdu) - head)
    return apdu[:head].hex().upper() + "**" * n + apdu[head + n :].hex().upper()
